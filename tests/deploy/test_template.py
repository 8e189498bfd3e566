"""template.yaml, read as data: handlers exist, the environment names only what the code reads,
and the security and reliability settings the issue asks for are there. No tools needed."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy._support import (
    REPO,
    env_names_in_source,
    function_environment,
    function_setting,
    powertools_env_names,
    resolve_defaults,
    resources_of_type,
)
from visual_search.config import REPO_MODEL_DIR

FUNCTIONS = ("IngestFunction", "SearchFunction")
BINARY_TYPES = {"image~1jpeg", "image~1png", "image~1webp", "multipart~1form-data"}


def api_routes() -> set[tuple[str, str]]:
    """Every route the search function serves, as the Powertools resolver registered it."""
    from visual_search.api import SearchApi
    from visual_search.config import load_settings

    app = SearchApi(None, None, load_settings()).app
    return {(r.method, r.openapi_path) for r in app._static_routes + app._dynamic_routes}


def ref(name: str) -> dict:
    return {"Ref": name}


def getatt(resource: str, attribute: str) -> dict:
    return {"Fn::GetAtt": [resource, attribute]}


@pytest.fixture(scope="module")
def env_read_by_code() -> set[str]:
    return env_names_in_source([REPO / "src", REPO / "functions"]) | set(powertools_env_names())


def test_the_env_scan_sees_the_configuration(env_read_by_code):
    # Guards the scanner itself: names read through os.environ.get and through _env*().
    assert {
        "QDRANT_URL",
        "QDRANT_API_KEY_PARAMETER",
        "MODEL_DIR",
        "COLLECTION",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_LOG_LEVEL",
    } <= env_read_by_code


@pytest.mark.parametrize("function", FUNCTIONS)
def test_handler_file_defines_the_handler(template, function):
    props = template["Resources"][function]["Properties"]
    module, _, name = props["Handler"].rpartition(".")
    path = REPO / props["CodeUri"] / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{function}: handler file {path.relative_to(REPO)} is missing"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert name in defs, f"{path.relative_to(REPO)} defines no top-level {name}()"
    assert len(defs[name].args.args) == 2, f"{name}(event, context) takes two arguments"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_environment_names_only_variables_the_code_reads(template, function, env_read_by_code):
    names = set(function_environment(template, function))
    unread = sorted(names - env_read_by_code)
    assert not unread, f"{function} sets variables no code reads: {unread}"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_no_secret_in_the_environment(template, function):
    env = function_environment(template, function)
    assert "QDRANT_API_KEY" not in env, "the key comes from SSM, never a plain environment value"
    assert env["QDRANT_API_KEY_PARAMETER"] == ref("QdrantApiKeyParameter")
    assert env["MODEL_DIR"] == {"Fn::Sub": "/opt/${ModelFolder}"}
    # the default is the checkout's default model folder, unpacked under /opt
    assert resolve_defaults(env["MODEL_DIR"], template) == f"/opt/{REPO_MODEL_DIR.name}"


def test_parameters(template):
    params = template["Parameters"]
    assert {
        "QdrantUrl",
        "QdrantApiKeyParameter",
        "Collection",
        "MemorySize",
        "LogLevel",
        "NotificationPrefix",
    } <= set(params)
    assert "Default" not in params["QdrantUrl"], "the Qdrant URL must be given explicitly"
    for name, _param in params.items():
        assert not re.search(r"api.?key$", name, re.I) or name == "QdrantApiKeyParameter", (
            f"{name}: secrets are not template parameters"
        )


def test_model_dir_matches_the_model_layer(template):
    layer = template["Resources"]["ModelLayer"]
    assert "Metadata" not in layer, "the model layer is packaged as is, without a build"
    folder = template["Parameters"]["ModelFolder"]
    model_dir = REPO / layer["Properties"]["ContentUri"] / folder["Default"]
    assert (model_dir / "model.onnx").is_file() and (model_dir / "model.json").is_file()
    # Every folder of the layer is a model the parameter can select: a card and its ONNX file.
    for candidate in (REPO / layer["Properties"]["ContentUri"]).iterdir():
        assert re.fullmatch(folder["AllowedPattern"], candidate.name), candidate
        assert (candidate / "model.onnx").is_file() and (candidate / "model.json").is_file(), candidate


def test_layers_and_runtime(template):
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.12"
    assert glob["Architectures"] == [ref("Architecture")]
    arch = template["Parameters"]["Architecture"]
    assert arch["Default"] == "x86_64" and arch["AllowedValues"] == ["x86_64", "arm64"]
    assert glob["Layers"] == [ref("DependenciesLayer"), ref("AppLayer"), ref("ModelLayer")]
    for name, layer in resources_of_type(template, "AWS::Serverless::LayerVersion").items():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"], name
        assert layer["Properties"]["CompatibleArchitectures"] == [ref("Architecture")], name
        # a new layer version publishes new function versions (AutoPublishAlias)
        assert layer["Properties"]["PublishLambdaVersion"] is True, name
    assert template["Resources"]["DependenciesLayer"]["Metadata"]["BuildArchitecture"] == ref("Architecture")
    deps = template["Resources"]["DependenciesLayer"]
    assert deps["Metadata"]["BuildMethod"] == "makefile"
    assert (REPO / deps["Properties"]["ContentUri"] / "Makefile").is_file()
    app = template["Resources"]["AppLayer"]
    assert (REPO / app["Properties"]["ContentUri"] / "visual_search" / "__init__.py").is_file()
    assert app["Metadata"]["BuildMethod"] == "makefile"  # src/Makefile leaves the dev modules out
    assert (REPO / app["Properties"]["ContentUri"] / "Makefile").is_file()


def test_the_functions_import_no_development_module():
    """What the code layer leaves out (tools/app_layer.py DEV_MODULES) no function needs."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import app_layer
    finally:
        sys.path.remove(str(REPO / "tools"))
    imported = app_layer.function_imports()
    assert {"visual_search.api", "visual_search.ingest.pipeline", "visual_search.store"} <= imported
    dev = sorted(m for m in imported if len(m.split(".")) > 1 and m.split(".")[1] in app_layer.DEV_MODULES)
    assert not dev, f"the functions import development modules the code layer leaves out: {dev}"
    # The ingest function runs the pipeline and its router, never the operator's code (ops/).
    ingest = app_layer.function_imports(("ingest",))
    assert {"visual_search.ingest.pipeline", "visual_search.ingest.router"} <= ingest
    operator = sorted(m for m in ingest if m.startswith("visual_search.ops"))
    assert not operator, f"the ingest function imports operator code: {operator}"


def _requirement_names(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(==\s*(\S+))?", line)
            out[match.group(1).lower().replace("_", "-")] = match.group(4)
    return out


def test_dependency_layer_pins_the_runtime_dependencies():
    layer = _requirement_names((REPO / "layers/dependencies/requirements.txt").read_text().splitlines())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = set(_requirement_names(project)) - {"boto3", "botocore"}  # in the Lambda runtime
    wanted -= {"tqdm"}  # the command line's progress bars: no function imports it
    assert set(layer) == wanted
    lock_file = REPO / "requirements.lock"
    if lock_file.exists():
        lock = _requirement_names(lock_file.read_text().splitlines())
        for name, version in layer.items():
            assert version, f"{name} is not pinned"
            assert lock.get(name) in (None, version), f"{name}: {version} here, {lock[name]} locked"


def test_ingest_queue_outlives_the_function(template):
    resources = template["Resources"]
    timeout = function_setting(template, "IngestFunction", "Timeout")
    event = resources["IngestFunction"]["Properties"]["Events"]["BucketChanges"]["Properties"]
    window = event.get("MaximumBatchingWindowInSeconds", 0)
    visibility = resources["IngestQueue"]["Properties"]["VisibilityTimeout"]
    assert visibility >= 6 * timeout + window, (visibility, timeout, window)


def test_ingest_event_source(template):
    event = template["Resources"]["IngestFunction"]["Properties"]["Events"]["BucketChanges"]
    assert event["Type"] == "SQS"
    props = event["Properties"]
    assert props["Queue"] == getatt("IngestQueue", "Arn")
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= props["BatchSize"] <= 100
    assert props["MaximumBatchingWindowInSeconds"] >= 1
    assert props["ScalingConfig"]["MaximumConcurrency"] == ref("IngestMaxConcurrency")


def test_dead_letter_queue_and_alarm(template):
    resources = template["Resources"]
    redrive = resources["IngestQueue"]["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == getatt("IngestDeadLetterQueue", "Arn")
    assert 1 <= redrive["maxReceiveCount"] <= 10
    alarms = resources_of_type(template, "AWS::CloudWatch::Alarm").values()
    assert any(
        alarm["Properties"]["Dimensions"]
        == [{"Name": "QueueName", "Value": getatt("IngestDeadLetterQueue", "QueueName")}]
        and alarm["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        for alarm in alarms
    )


def test_bucket_is_private_encrypted_and_tls_only(template):
    resources = template["Resources"]
    bucket = resources["ImagesBucket"]["Properties"]
    block = bucket["PublicAccessBlockConfiguration"]
    assert all(
        block[key] is True
        for key in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    )
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    (policy,) = [r["Properties"] for r in resources_of_type(template, "AWS::S3::BucketPolicy").values()]
    assert policy["Bucket"] == ref("ImagesBucket")
    tls = [
        s
        for s in policy["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", False)
    ]
    assert tls, "no statement denies requests without TLS"
    assert tls[0]["Principal"] == "*" and tls[0]["Action"] in ("s3:*", ["s3:*"])
    assert getatt("ImagesBucket", "Arn") in tls[0]["Resource"]
    assert {"Fn::Sub": "${ImagesBucket.Arn}/*"} in tls[0]["Resource"]


def test_bucket_notifications_reach_only_the_queue_from_that_bucket(template):
    resources = template["Resources"]
    bucket = resources["ImagesBucket"]
    configs = bucket["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert {c["Event"] for c in configs} == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    for config in configs:
        assert config["Queue"] == getatt("IngestQueue", "Arn")
        assert config["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": ref("NotificationPrefix")}]
    # No cycle: the bucket waits for the queue policy, which names the bucket by its ARN.
    assert bucket["DependsOn"] in ("IngestQueuePolicy", ["IngestQueuePolicy"])
    (statement,) = resources["IngestQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    name_sub = bucket["Properties"]["BucketName"]["Fn::Sub"]
    arn_sub = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert arn_sub[0] == "arn:${AWS::Partition}:s3:::" + name_sub[0]
    assert arn_sub[1] == name_sub[1]
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == ref("AWS::AccountId")


def test_query_uploads_expire_and_are_not_indexed(template):
    bucket = template["Resources"]["ImagesBucket"]["Properties"]
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert any(
        r.get("Prefix") == ref("UploadPrefix") and r["ExpirationInDays"] == 1 and r["Status"] == "Enabled"
        for r in rules
    )
    env = function_environment(template, "SearchFunction")
    assert env["UPLOAD_PREFIX"] == ref("UploadPrefix")
    assert env["UPLOAD_BUCKET"] == env["BUCKET"] == ref("ImagesBucket")
    assert function_environment(template, "IngestFunction")["INGEST_PREFIX"] == ref("NotificationPrefix")
    defaults = {
        name: template["Parameters"][name]["Default"] for name in ("NotificationPrefix", "UploadPrefix")
    }
    assert not defaults["UploadPrefix"].startswith(defaults["NotificationPrefix"])
    assert not defaults["NotificationPrefix"].startswith(defaults["UploadPrefix"])
    (rule,) = template["Rules"].values()
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [ref("NotificationPrefix"), ref("UploadPrefix")]}]
    }


def test_api_routes_binary_types_key_and_cors(template):
    api = template["Resources"]["SearchApi"]
    assert api["Type"] == "AWS::Serverless::Api"
    props = api["Properties"]
    assert set(props["BinaryMediaTypes"]) >= BINARY_TYPES
    assert props["Auth"]["ApiKeyRequired"] is True
    plan = props["Auth"]["UsagePlan"]
    assert plan["CreateUsagePlan"] == "PER_API" and {"RateLimit", "BurstLimit"} <= set(plan["Throttle"])
    assert "AllowOrigin" in props["Cors"]
    events = template["Resources"]["SearchFunction"]["Properties"]["Events"].values()
    routes = {
        (e["Properties"]["Method"].upper(), e["Properties"]["Path"])
        for e in events
        if e["Type"] == "Api" and e["Properties"]["RestApiId"] == ref("SearchApi")
    }
    assert routes == api_routes(), "each route of the function is deployed, and no other"


def test_gateway_errors_have_the_service_error_shape(template):
    """API Gateway's own errors (missing key, throttling, unknown route) look like the
    function's: {"error": {"code", "message"}}, with the CORS header; no body model answers
    in another shape before the function can."""
    props = template["Resources"]["SearchApi"]["Properties"]
    assert "Models" not in props
    for event in template["Resources"]["SearchFunction"]["Properties"]["Events"].values():
        assert "RequestModel" not in event["Properties"]
    responses = props["GatewayResponses"]
    assert responses["MISSING_AUTHENTICATION_TOKEN"]["StatusCode"] == "404"
    sample = {
        "$context.error.responseType": "THROTTLED",
        "$context.error.messageString": '"Too Many Requests"',
        "$context.httpMethod": "GET",
        "$context.path": "/nowhere",
    }
    for name in ("DEFAULT_4XX", "DEFAULT_5XX", "MISSING_AUTHENTICATION_TOKEN"):
        response = responses[name]
        assert "Access-Control-Allow-Origin" in response["ResponseParameters"]["Headers"]
        body = response["ResponseTemplates"]["application/json"]
        for variable, value in sample.items():
            body = body.replace(variable, value)
        error = json.loads(body)["error"]
        assert set(error) == {"code", "message"} and error["code"] and error["message"], name


def test_max_body_fits_a_synchronous_lambda_event(template):
    env = function_environment(template, "SearchFunction")
    body = int(resolve_defaults(env["MAX_BODY_BYTES"], template))
    assert body * 4 / 3 < 6 * 1000 * 1000 - 64 * 1024  # base64 plus the event's envelope


def _statements(template: dict, role: str) -> list[dict]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for policy in policies for s in policy["PolicyDocument"]["Statement"]]


def _as_list(value):
    return value if isinstance(value, list) else [value]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_least_privilege(template, function):
    role = template["Resources"][function]["Properties"]["Role"]
    assert role == getatt(f"{function}Role", "Arn"), "explicit roles, no SAM managed policies"
    statements = _statements(template, f"{function}Role")
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"]):
            assert "*" not in action, f"{function}: wildcard action {action}"
        resources = _as_list(statement["Resource"])
        if resources == ["*"]:
            assert all(a.startswith("xray:") for a in _as_list(statement["Action"])), statement
    actions = {a for s in statements for a in _as_list(s["Action"])}
    ssm = [s for s in statements if "ssm:GetParameter" in _as_list(s["Action"])]
    assert len(ssm) == 1 and "${QdrantApiKeyParameter}" in ssm[0]["Resource"]["Fn::Sub"]
    kms = [s for s in statements if "kms:Decrypt" in _as_list(s["Action"])]
    assert kms and all("kms:ViaService" in s["Condition"]["StringEquals"] for s in kms)
    s3_resources = [
        r
        for s in statements
        if any(a.startswith("s3:") for a in _as_list(s["Action"]))
        for r in _as_list(s["Resource"])
    ]
    registry = {"Fn::If": ["HasModelsBucket", {"Ref": "ModelsBucket"}, {"Ref": "ImagesBucket"}]}
    for resource in s3_resources:
        text = resource["Fn::Sub"] if isinstance(resource, dict) and "Fn::Sub" in resource else None
        if isinstance(text, list):  # the model registry's bucket: read-only, models/ only
            assert text in (
                ["arn:${AWS::Partition}:s3:::${Bucket}/models/*", {"Bucket": registry}],
                ["arn:${AWS::Partition}:s3:::${Bucket}", {"Bucket": registry}],
            ), resource
            continue
        assert text is None or text.startswith("${ImagesBucket.Arn}"), resource
    models = [s for s in statements if s.get("Sid") in ("ReadModels", "ListModels")]
    assert [_as_list(s["Action"]) for s in models] == [["s3:GetObject"], ["s3:ListBucket"]]
    statements = [s for s in statements if s not in models]
    if function == "IngestFunction":
        assert actions >= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "s3:GetObject"}
        assert "s3:PutObject" not in actions
        get = [s for s in statements if "s3:GetObject" in _as_list(s["Action"])]
        assert get[0]["Resource"] == {"Fn::Sub": "${ImagesBucket.Arn}/${NotificationPrefix}*"}
    else:
        assert not any(a.startswith("sqs:") for a in actions)
        put = [s for s in statements if "s3:PutObject" in _as_list(s["Action"])]
        assert put[0]["Resource"] == {"Fn::Sub": "${ImagesBucket.Arn}/${UploadPrefix}*"}
        get = [s for s in statements if "s3:GetObject" in _as_list(s["Action"])]
        assert get[0]["Resource"] == [
            {"Fn::Sub": "${ImagesBucket.Arn}/${NotificationPrefix}*"},
            {"Fn::Sub": "${ImagesBucket.Arn}/${UploadPrefix}*"},
        ]
    lists = [s for s in statements if "s3:ListBucket" in _as_list(s["Action"])]
    assert len(lists) == 1, "ListBucket, so a missing key answers 404 rather than 403"
    # On the bucket, without an s3:prefix condition: object requests carry no prefix, so under
    # such a condition S3 would still answer 403 for a missing key.
    assert lists[0]["Resource"] == getatt("ImagesBucket", "Arn") and "Condition" not in lists[0]


def test_outputs(template):
    assert {"ApiUrl", "BucketName", "IngestQueueName", "DeadLetterQueueName"} <= set(template["Outputs"])


def test_samconfig_defaults():
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert "QdrantUrl" not in deploy.get("parameter_overrides", ""), "asked by --guided"
    assert config["default"]["global"]["parameters"]["stack_name"]


def test_sample_events_are_what_their_functions_read():
    """Every sample event parses the way its function reads it: API events are requests the
    search function accepts, S3 and SQS events yield the changes the ingest function applies."""
    import json

    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

    from visual_search.api.requests import search_input
    from visual_search.ingest.events import changes_in_message, event_kind, is_test_event, parse_sqs_body

    paths = sorted(Path(REPO / "events").glob("*.json"))
    assert len(paths) >= 10
    for path in paths:
        event = json.loads(path.read_text())
        name = path.name
        if name.startswith("api-"):
            assert event["httpMethod"] in {"GET", "POST"} and event["path"].startswith("/"), name
            assert event["resource"] and isinstance(event.get("headers"), dict), name
            if name.startswith("api-search") and name != "api-search-s3-key.json":
                found = search_input(APIGatewayProxyEvent(event), 10 * 2**20)
                assert found.image or found.options, name  # a body the API accepts
        elif name.startswith("sqs-"):
            assert event_kind(event) == "sqs", name
            for record in event["Records"]:
                changes = parse_sqs_body(record["body"])
                assert bool(changes) != is_test_event(json.loads(record["body"])), name
        elif "test-event" in name:
            assert event_kind(event) == "test", name
        else:
            assert event_kind(event) == "s3" and list(changes_in_message(event)), name


def _parameters_in(node, names: set[str]) -> set[str]:
    """Template parameters a property refers to (!Ref X, ${X} in !Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and value in names:
                found.add(value)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= set(re.findall(r"\$\{([A-Za-z0-9]+)\}", text)) & names
            else:
                found |= _parameters_in(value, names)
    elif isinstance(node, list):
        for item in node:
            found |= _parameters_in(item, names)
    return found


@pytest.mark.parametrize("function", FUNCTIONS)
def test_snapstart_through_an_alias_that_follows_every_parameter(template, function):
    props = template["Resources"][function]["Properties"]
    assert props["SnapStart"] == {"ApplyOn": ref("SnapStartApplyOn")}
    applies = template["Parameters"]["SnapStartApplyOn"]
    assert applies["Default"] == "PublishedVersions" and applies["AllowedValues"] == [
        "PublishedVersions",
        "None",
    ]
    assert props["AutoPublishAlias"] == "live" and props["AutoPublishAliasAllProperties"] is True
    # SAM hashes the version from properties as written: every parameter the function's own
    # configuration uses must be in the version's description, so changing it alone publishes
    # a new version (CloudFormation replaces a version whose description changed).
    names = set(template["Parameters"])
    config = {k: v for k, v in props.items() if k not in ("Events", "VersionDescription")}
    used = _parameters_in(config, names) | _parameters_in(template["Globals"]["Function"], names)
    described = _parameters_in(props["VersionDescription"], names)
    assert used - described == set(), f"{function}: parameters missing from VersionDescription"
    assert {"MemorySize", "Architecture", "QdrantUrl"} <= used


def test_maintenance_function_refits_on_a_schedule_with_qdrant_only(template, env_read_by_code):
    props = template["Resources"]["MaintenanceFunction"]["Properties"]
    path = REPO / props["CodeUri"] / "app.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert "handler" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    (event,) = props["Events"].values()
    assert event["Type"] == "Schedule" and event["Properties"]["Schedule"] == ref("AdaptSchedule")
    env = function_environment(template, "MaintenanceFunction")
    assert env["ADAPT_CHANGE_THRESHOLD"] == ref("AdaptChangeThreshold")
    assert not sorted(set(env) - env_read_by_code)
    assert "QDRANT_API_KEY" not in env and env["QDRANT_API_KEY_PARAMETER"] == ref("QdrantApiKeyParameter")
    assert "PROJECTION_CHECK_S" in function_environment(template, "SearchFunction")
    assert function_setting(template, "MaintenanceFunction", "Timeout") == 900
    params = template["Parameters"]
    assert params["AdaptSchedule"]["Default"].startswith("rate(")
    assert re.fullmatch(
        params["AdaptChangeThreshold"]["AllowedPattern"], params["AdaptChangeThreshold"]["Default"]
    )
    role = props["Role"]
    assert role == getatt("MaintenanceFunctionRole", "Arn")
    statements = _statements(template, "MaintenanceFunctionRole")
    # the projection lives in Qdrant; S3 only to read a collection's model from the registry
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert [(s["Sid"], s["Action"]) for s in s3] == [
        ("ReadModels", "s3:GetObject"),
        ("ListModels", "s3:ListBucket"),
    ]
    assert "models/*" in s3[0]["Resource"]["Fn::Sub"][0]
    actions = {a for s in statements for a in _as_list(s["Action"])}
    assert not any(a.startswith("sqs:") for a in actions)
    for statement in _statements(template, "MaintenanceFunctionRole"):
        assert all("*" not in a for a in _as_list(statement["Action"]))


def test_the_model_registry_and_the_training_role(template):
    params = template["Parameters"]
    assert params["ModelsBucket"]["Default"] == "" and params["SageMakerTraining"]["Default"] == "false"
    for function in (*FUNCTIONS, "MaintenanceFunction"):
        env = function_environment(template, function)
        assert env["MODELS_BUCKET"] == {
            "Fn::If": ["HasModelsBucket", {"Ref": "ModelsBucket"}, {"Ref": "ImagesBucket"}]
        }
        assert env["MODELS_PREFIX"] == "models/"
    training = template["Resources"]["TrainingRole"]
    assert training["Condition"] == "CreateTrainingRole"
    assert template["Conditions"]["CreateTrainingRole"] == {
        "Fn::Equals": [{"Ref": "SageMakerTraining"}, "true"]
    }
    principal = training["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "sagemaker.amazonaws.com"}
    statements = _statements(template, "TrainingRole")
    by_sid = {s["Sid"]: s for s in statements}
    assert by_sid["ReadCatalogue"]["Resource"] == {"Fn::Sub": "${ImagesBucket.Arn}/${NotificationPrefix}*"}
    assert by_sid["ReadWriteModels"]["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert "models/*" in by_sid["ReadWriteModels"]["Resource"]["Fn::Sub"][0]
    writes = {
        a for s in statements for a in _as_list(s["Action"]) if a in ("s3:PutObject", "s3:DeleteObject")
    }
    assert writes == {"s3:PutObject"}  # into models/ only, never the catalogue
    assert template["Outputs"]["TrainingRoleArn"]["Condition"] == "CreateTrainingRole"


def test_learning_from_clicks_keeps_searches_for_their_ttl_outside_the_catalogue(template):
    params = template["Parameters"]
    assert params["LearnFromClicks"]["Default"] == "true"
    assert params["QueryPhotoTtlHours"]["Default"] == 24
    assert params["MaxShopperViewsPerProduct"]["Default"] == 50
    days = template["Mappings"]["QueryPhotoDays"]
    for hours in params["QueryPhotoTtlHours"]["AllowedValues"]:  # whole days, never shorter
        assert days[str(hours)]["Days"] == -(-int(hours) // 24)
    rules = template["Resources"]["ImagesBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (rule,) = [r for r in rules if r["Id"] == "expire-query-photos"]
    assert rule["Prefix"] == "query-photos/" and rule["ExpirationInDays"] == {
        "Fn::FindInMap": ["QueryPhotoDays", ref("QueryPhotoTtlHours"), "Days"]
    }
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert env["LEARN_FROM_CLICKS"] == ref("LearnFromClicks")
    assert env["QUERY_PHOTO_TTL_H"] == ref("QueryPhotoTtlHours")
    assert env["QUERY_PHOTO_PREFIX"] == rule["Prefix"]  # outside NotificationPrefix: never notified
    assert env["SHOPPER_VIEWS_PREFIX"] == {"Fn::Sub": "${NotificationPrefix}shopper-views/"}
    assert env["MAX_SHOPPER_VIEWS_PER_PRODUCT"] == ref("MaxShopperViewsPerProduct")

    def statements(role):
        policy = template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]
        return {s["Sid"]: s for s in policy["Statement"]}

    keep = statements("SearchFunctionRole")["KeepSearches"]
    assert set(keep["Action"]) == {"s3:PutObject", "s3:GetObject", "s3:DeleteObject"}
    assert keep["Resource"] == [
        {"Fn::Sub": "${ImagesBucket.Arn}/query-photos/*"},
        {"Fn::Sub": "${ImagesBucket.Arn}/${NotificationPrefix}shopper-views/*"},
    ]
    drop = statements("IngestFunctionRole")["DropShopperViews"]
    assert drop["Action"] == "s3:DeleteObject"
    assert drop["Resource"] == {"Fn::Sub": "${ImagesBucket.Arn}/${NotificationPrefix}shopper-views/*"}
