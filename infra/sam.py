"""Read and translate infra/template.yaml offline (tests, packaging, docs all use this view)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

INFRA = Path(__file__).resolve().parent
TEMPLATE = INFRA / "template.yaml"
SERVERLESS_FUNCTION = "AWS::Serverless::Function"

# Placeholders for the parameters the template needs (no AWS account is involved).
EXAMPLE_PARAMETERS: dict[str, Any] = {
    "SubnetIds": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
    "SecurityGroupId": "sg-0123456789abcdef0",
    "DbProxyEndpoint": "ticketing.proxy-abc.eu-west-1.rds.amazonaws.com",
    "DbSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ticketing-db-AbCdEf",
    "WorkerImageUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ticketing-worker:latest",
    "NotifyFromAddress": "tickets@box-office.ticketing.dev",
}


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as plain dicts, short-form tags (!Ref, !Sub) expanded to Fn:: form."""
    from cfnlint.decode import cfn_yaml

    data: dict[str, Any] = json.loads(json.dumps(cfn_yaml.load(str(path))))
    return data


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Logical id -> properties of every AWS::Serverless::Function (Globals merged in)."""
    glob = template.get("Globals", {}).get("Function", {})
    out = {}
    for name, res in template["Resources"].items():
        if res["Type"] == SERVERLESS_FUNCTION:
            out[name] = {**glob, **res.get("Properties", {})}
    return out


def http_routes(props: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of a function's HttpApi event sources."""
    routes = set()
    for source in props.get("Events", {}).values():
        if source["Type"] == "HttpApi":
            p = source["Properties"]
            routes.add((str(p["Method"]).upper(), str(p["Path"])))
    return routes


def shape(path: str) -> str:
    """A path with its variable names erased: /events/{event_id} -> /events/{}."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def code_key(code_uri: str) -> str:
    """S3 key a local CodeUri (../build/lambda/x.zip) is uploaded under."""
    return Path(code_uri).name


def translate(
    template: dict[str, Any],
    bucket: str = "ticketing-artifacts",
    parameters: dict[str, Any] | None = None,
    region: str = "eu-west-1",
) -> dict[str, Any]:
    """Apply the SAM transform offline (what CloudFormation does on deploy).

    Local CodeUris become s3://bucket/<zip name>, as `sam package` would upload them.
    """
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    sam = copy.deepcopy(template)
    for res in sam["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] == SERVERLESS_FUNCTION and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = f"s3://{bucket}/{code_key(props['CodeUri'])}"
    values = {**EXAMPLE_PARAMETERS, **(parameters or {})}
    session = boto3.session.Session(region_name=region)
    translator = Translator(managed_policy_map={}, sam_parser=Parser(), boto_session=session)
    result: dict[str, Any] = translator.translate(sam, parameter_values=values)
    return result
