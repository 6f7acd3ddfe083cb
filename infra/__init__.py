"""Deployment of the functions: SAM template, per-function packages, Kubernetes manifests."""
