// Every image target for amd64 and arm64 in one command:
//
//   docker buildx bake                       # every target, amd64 + arm64
//   docker buildx bake --push                # ... and push (IMAGE_PREFIX=registry/name)
//   docker buildx bake api --set '*.platform=linux/amd64' --load   # one local image
//
// Tags: ${IMAGE_PREFIX}-api:${TAG} and ${IMAGE_PREFIX}-worker:${TAG} (multi-arch), and
// ${IMAGE_PREFIX}-lambda:${TAG}-x86_64 / -arm64 (one per Lambda architecture).

variable "IMAGE_PREFIX" {
  default = "ticketing"
}

variable "TAG" {
  default = "dev"
}

variable "PYTHON_VERSION" {
  default = "3.11"
}

group "default" {
  targets = ["api", "worker", "lambda-x86_64", "lambda-arm64"]
}

target "_common" {
  context    = "."
  dockerfile = "Dockerfile"
  platforms  = ["linux/amd64", "linux/arm64"]
  args = {
    PYTHON_VERSION = PYTHON_VERSION
  }
}

target "api" {
  inherits = ["_common"]
  target   = "api"
  tags     = ["${IMAGE_PREFIX}-api:${TAG}"]
}

target "worker" {
  inherits = ["_common"]
  target   = "worker"
  tags     = ["${IMAGE_PREFIX}-worker:${TAG}"]
}

// Lambda rejects multi-architecture manifests (and the attestation index buildx adds by
// default): one single-platform image per Lambda architecture, provenance off.
group "lambda" {
  targets = ["lambda-x86_64", "lambda-arm64"]
}

target "_lambda" {
  inherits = ["_common"]
  target   = "lambda"
  attest   = ["type=provenance,disabled=true", "type=sbom,disabled=true"]
}

target "lambda-x86_64" {
  inherits  = ["_lambda"]
  platforms = ["linux/amd64"]
  tags      = ["${IMAGE_PREFIX}-lambda:${TAG}-x86_64"]
}

target "lambda-arm64" {
  inherits  = ["_lambda"]
  platforms = ["linux/arm64"]
  tags      = ["${IMAGE_PREFIX}-lambda:${TAG}-arm64"]
}
