"""infra/template.yaml checked offline: cfn-lint (raw and SAM-translated), handlers, routes, moto."""

from __future__ import annotations

import copy
import importlib
import io
import json
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.api import lint_file
from moto import mock_aws
from starlette.routing import Match

from infra import sam

ROOT = Path(__file__).resolve().parents[2]
HTTP_FUNCTIONS = ("users", "events", "booking")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load_template()


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam.translate(template)


def _lint(doc: dict[str, Any], tmp_path: Path, name: str) -> list[str]:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return [str(m) for m in lint_file(path)]


def _by_folder(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """functions/<folder> -> its Serverless::Function properties (found by handler string)."""
    out = {}
    for props in sam.functions(template).values():
        parts = props["Handler"].split(".")
        if parts[0] == "functions" and parts[1] in HTTP_FUNCTIONS:
            out[parts[1]] = props
    return out


def _app_routes(folder: str) -> set[tuple[str, str]]:
    router = importlib.import_module(f"functions.{folder}.routes").router
    return {(m, r.path) for r in router.routes for m in r.methods}


# --- cfn-lint ---------------------------------------------------------------------------------


def test_cfn_lint_raw_template() -> None:
    assert [str(m) for m in lint_file(sam.TEMPLATE)] == []


def test_cfn_lint_after_sam_transform(translated: dict[str, Any], tmp_path: Path) -> None:
    assert "Transform" not in translated
    assert _lint(translated, tmp_path, "translated.json") == []


def test_lint_pipeline_catches_errors_inside_sam_resources(
    template: dict[str, Any], tmp_path: Path
) -> None:
    """The checks can fail: a bad runtime and memory size inside a SAM function are found."""
    broken = copy.deepcopy(template)
    props = broken["Resources"]["BookingFunction"]["Properties"]
    props["Runtime"] = "python2.1"
    props["MemorySize"] = 50
    found = " ".join(_lint(sam.translate(broken), tmp_path, "broken.json"))
    assert "python2.1" in found
    assert "50" in found


# --- functions, handlers and routes --------------------------------------------------------


def test_every_http_function_folder_is_deployed(template: dict[str, Any]) -> None:
    http_folders = sorted(p.parent.name for p in (ROOT / "functions").glob("*/app.py"))
    assert http_folders == sorted(HTTP_FUNCTIONS)
    assert sorted(_by_folder(template)) == http_folders


def test_every_handler_resolves_to_a_callable(template: dict[str, Any]) -> None:
    for name, props in sam.functions(template).items():
        module_name, _, attr = props["Handler"].rpartition(".")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr)), f"{name}: {props['Handler']}"


@pytest.mark.parametrize("folder", HTTP_FUNCTIONS)
def test_template_routes_equal_the_app_routes(template: dict[str, Any], folder: str) -> None:
    """No route missing, none extra (variable names may differ: see the next test)."""
    deployed = {(m, sam.shape(p)) for m, p in sam.http_routes(_by_folder(template)[folder])}
    served = {(m, sam.shape(p)) for m, p in _app_routes(folder)}
    assert deployed == served


@pytest.mark.parametrize("folder", HTTP_FUNCTIONS)
def test_each_route_key_reaches_the_same_app_route(template: dict[str, Any], folder: str) -> None:
    """A request API Gateway sends to this function lands on the app route of that method."""
    router = importlib.import_module(f"functions.{folder}.routes").router
    for method, path in sam.http_routes(_by_folder(template)[folder]):
        concrete = "/".join("7" if "{" in seg else seg for seg in path.split("/"))
        scope = {"type": "http", "method": method, "path": concrete, "root_path": ""}
        full = [r for r in router.routes if r.matches(scope)[0] == Match.FULL]
        assert full, f"{method} {path} reaches no route of functions.{folder}"
        assert sam.shape(full[0].path) == sam.shape(path)


def test_route_keys_are_unique_and_use_one_variable_name_per_position(
    template: dict[str, Any],
) -> None:
    """API Gateway rejects /events/{a} next to /events/{b}; and a key may have one target."""
    owners: dict[tuple[str, str], str] = {}
    names: dict[str, set[str]] = defaultdict(set)
    for fn, props in sam.functions(template).items():
        for method, path in sam.http_routes(props):
            assert (method, path) not in owners, f"{method} {path}: {owners.get((method, path))}"
            owners[(method, path)] = fn
            segments = path.split("/")
            for i, seg in enumerate(segments):
                if seg.startswith("{"):
                    names[sam.shape("/".join(segments[:i]))].add(seg)
    clashes = {prefix: found for prefix, found in names.items() if len(found) > 1}
    assert clashes == {}


def test_http_events_use_payload_v2_on_the_one_api(template: dict[str, Any]) -> None:
    for props in _by_folder(template).values():
        for event in props["Events"].values():
            assert event["Type"] == "HttpApi"
            assert event["Properties"]["PayloadFormatVersion"] == "2.0"
            assert event["Properties"]["ApiId"] == {"Ref": "HttpApi"}


def test_functions_arm64_current_runtime_log_retention(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    lambdas = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::Lambda::Function"}
    assert set(lambdas) == {"UsersFunction", "EventsFunction", "BookingFunction", "RelayFunction"}
    retained = {
        json.dumps(v["Properties"]["LogGroupName"])
        for v in resources.values()
        if v["Type"] == "AWS::Logs::LogGroup" and "RetentionInDays" in v["Properties"]
    }
    for name, props in lambdas.items():
        assert props["Architectures"] == ["arm64"]
        assert props["Runtime"] in {"python3.12", "python3.13"}
        assert 128 <= props["MemorySize"] <= 3008 and 3 <= props["Timeout"] <= 60
        assert "SubnetIds" in props["VpcConfig"]
        assert json.dumps({"Fn::Sub": f"/aws/lambda/${{{name}}}"}) in retained


def test_relay_runs_on_a_schedule(translated: dict[str, Any]) -> None:
    rules = [r["Properties"] for r in translated["Resources"].values() if r["Type"] == "AWS::Events::Rule"]
    assert [r["ScheduleExpression"] for r in rules] == ["rate(1 minute)"]
    assert rules[0]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["RelayFunction", "Arn"]}


def test_api_is_throttled_and_worker_is_a_fargate_service(translated: dict[str, Any]) -> None:
    resources = translated["Resources"]
    stage = next(r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Stage")
    assert stage["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert "POST /bookings" in stage["RouteSettings"]
    service = resources["WorkerService"]["Properties"]
    assert service["LaunchType"] == "FARGATE"
    worker = resources["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert worker["Command"][:4] == ["celery", "-A", "functions.notify.worker", "worker"]


# --- moto CloudFormation ---------------------------------------------------------------------


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("placeholder.py", "")
    return buf.getvalue()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


# moto has no API Gateway v2 in CloudFormation: it warns and skips those two resources.
@pytest.mark.filterwarnings("ignore:Tried to parse AWS.*ApiGatewayV2.*:UserWarning")
@mock_aws
def test_translated_template_deploys_into_moto(aws_env: None, template: dict[str, Any]) -> None:
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="fn", Description="functions", VpcId=vpc)["GroupId"]
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for props in sam.functions(template).values():
        s3.put_object(Bucket="artifacts", Key=sam.code_key(props["CodeUri"]), Body=_zip())

    params = {**sam.EXAMPLE_PARAMETERS, "SubnetIds": [subnet], "SecurityGroupId": group}
    body = sam.translate(template, bucket="artifacts", parameters=params)
    cfn = boto3.client("cloudformation")
    cfn.create_stack(
        StackName="ticketing",
        TemplateBody=json.dumps(body),
        Parameters=[
            {"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in params.items()
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName="ticketing")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert ".execute-api.eu-west-1." in outputs["ApiUrl"]

    lam = boto3.client("lambda")
    expected = {logical: props["Handler"] for logical, props in sam.functions(template).items()}
    deployed_template = cfn.get_template(StackName="ticketing")["TemplateBody"]
    if isinstance(deployed_template, str):
        deployed_template = json.loads(deployed_template)
    for logical, handler in expected.items():
        cfg = lam.get_function_configuration(FunctionName=outputs[f"{logical}Name"])
        assert cfg["Handler"] == handler
        assert cfg["Runtime"] == "python3.12"
        assert cfg["VpcConfig"]["SubnetIds"] == [subnet]
        env = cfg["Environment"]["Variables"]
        assert env["DATABASE_URL_SECRET_ARN"] == params["DbSecretArn"]
        assert env["DATABASE_HOST"] == params["DbProxyEndpoint"]
        assert env["APP_ENV"] == "production"
        assert "DATABASE_URL" not in env and "JWT_SECRET" not in env  # references only
        # moto's Lambda model drops Architectures from CloudFormation (it reports x86_64),
        # so the architecture is read from the template CloudFormation was given.
        assert deployed_template["Resources"][logical]["Properties"]["Architectures"] == ["arm64"]
    ecs = boto3.client("ecs")
    services = ecs.list_services(cluster=outputs["WorkerClusterName"])["serviceArns"]
    assert len(services) == 1
    task = ecs.describe_task_definition(taskDefinition=outputs["MigrateTaskDefinitionArn"])
    assert task["taskDefinition"]["containerDefinitions"][0]["command"] == [
        "python", "-m", "shared.platform.migrate"
    ]


def test_environment_names_are_settings_or_aws_references(template: dict[str, Any]) -> None:
    """pydantic-settings ignores unknown names silently, so a typo here would go unnoticed."""
    from shared.platform import aws_config
    from shared.platform.settings import Settings

    known = {f.upper() for f in Settings.model_fields}
    known |= {f"{f.upper()}{s}" for f in aws_config.REMOTE_FIELDS
              for s in (aws_config.SECRET_SUFFIX, aws_config.SSM_SUFFIX)}
    known |= {"DATABASE_HOST", "DATABASE_PORT", "DATABASE_NAME", "DATABASE_SSLMODE"}
    names = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        names |= set(props.get("Environment", {}).get("Variables", {}))
        for container in props.get("ContainerDefinitions", []):
            names |= {e["Name"] for e in container.get("Environment", [])}
    assert names - known == set()


def test_http_functions_answer_a_hung_database_before_their_timeout(translated: dict[str, Any]) -> None:
    # A keyed booking on a hung database takes at most two database steps (the booking,
    # then freeing its key), each cut off at DB_REQUEST_DEADLINE_SECONDS: 503, not a timeout.
    resources = translated["Resources"]
    for name in ("UsersFunction", "EventsFunction", "BookingFunction"):
        props = resources[name]["Properties"]
        env = props["Environment"]["Variables"]
        deadline = float(env["DB_REQUEST_DEADLINE_SECONDS"])
        assert deadline * 1000 > int(env["DB_STATEMENT_TIMEOUT_MS"]), name
        assert 2 * deadline + 1 < props["Timeout"], name


@pytest.mark.parametrize("address", ["tickets@example.com", "a@mail.example.org", "a@x.example.net",
                                     "a@shop.example", "a@b.test", "a@b.invalid", "a@b.localhost", ""])
def test_notify_sender_has_no_default_and_refuses_reserved_domains(
    template: dict[str, Any], address: str
) -> None:
    """SES rejects every mail from a placeholder sender; the stack must not deploy with one."""
    import re

    param = template["Parameters"]["NotifyFromAddress"]
    assert "Default" not in param
    assert not re.fullmatch(param["AllowedPattern"], address)
    assert re.fullmatch(param["AllowedPattern"], sam.EXAMPLE_PARAMETERS["NotifyFromAddress"])
