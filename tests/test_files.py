"""Atomic writes: a reader sees the old file or the whole new one, and no temporary file stays."""

import json
import os

import numpy as np
import pytest

from remote_samsing._files import replace_path, temporary_name, write_atomic, write_json_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "state.txt"
    p.write_text("old")
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert p.read_text() == "old"  # the old file stays in place while the new one is written
        tmp.write_text("new")

    assert write_atomic(p, write) == p
    assert p.read_text() == "new"
    assert seen[0] != p and seen[0].parent == tmp_path
    assert [q.name for q in tmp_path.iterdir()] == ["state.txt"]


def test_write_atomic_keeps_the_old_file_when_the_writer_raises(tmp_path):
    p = tmp_path / "state.txt"
    p.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(p, write)
    assert p.read_text() == "old"
    assert list(tmp_path.glob("*.partial*")) == []
    assert [q.name for q in tmp_path.iterdir()] == ["state.txt"]


def test_write_json_atomic_writes_numpy_values_as_numbers_and_lists(tmp_path):
    data = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3, dtype=np.uint32), "t": (1, 2)}
    p = write_json_atomic(tmp_path / "a.json", data)
    assert json.loads(p.read_text()) == {"n": 3, "x": 0.5, "a": [0, 1, 2], "t": [1, 2]}
    assert "\n  " in p.read_text()  # indent=2 by default
    write_json_atomic(p, {"a": np.array([[1, 2]]), "b": 1}, indent=None)
    assert p.read_text() == '{"a": [[1, 2]], "b": 1}'


def test_replace_path_replaces_files_and_folders_and_creates_missing_targets(tmp_path):
    new_file, old_file = tmp_path / "new.txt", tmp_path / "out.txt"
    new_file.write_text("new")
    old_file.write_text("old")
    assert replace_path(new_file, old_file) == old_file
    assert old_file.read_text() == "new" and not new_file.exists()

    new_dir, old_dir = tmp_path / "new.zarr", tmp_path / "out.zarr"
    (new_dir / "sub").mkdir(parents=True)
    (new_dir / "sub" / "a").write_text("a")
    (old_dir / "stale").mkdir(parents=True)
    (old_dir / "stale" / "b").write_text("b")
    replace_path(new_dir, old_dir)
    assert sorted(str(q.relative_to(old_dir)) for q in old_dir.rglob("*")) == ["sub", "sub/a"]
    assert not new_dir.exists()

    (tmp_path / "fresh.tmp").write_text("fresh")
    replace_path(tmp_path / "fresh.tmp", tmp_path / "missing.txt")
    assert (tmp_path / "missing.txt").read_text() == "fresh" and not (tmp_path / "fresh.tmp").exists()


def test_temporary_name_is_a_unique_sibling(tmp_path):
    p = tmp_path / "labels.zarr"
    names = {temporary_name(p) for _ in range(100)}
    assert len(names) == 100
    for t in names:
        assert t.parent == tmp_path and t.name.startswith("labels.") and t.name.endswith(".partial.zarr")
    assert temporary_name(str(p)).parent == tmp_path  # a str path too


@pytest.mark.parametrize("root", ["local", "memory://rs-test-many"])
def test_read_many_and_write_many_keep_order_and_names_as_written(tmp_path, root):
    """Order and duplicates kept; "[", "*" and "?" in a name are characters, not a glob pattern; a
    missing file raises FileNotFoundError; an empty list is nothing."""
    from remote_samsing._files import location, read_many, remove_tree, write_many

    base = location(tmp_path if root == "local" else root)
    names = ["b_0_1.pkl", "a[1].pkl", "c*?.pkl"]
    try:
        write_many([(base / n, n.encode() * 3) for n in names])
        got = read_many([base / "c*?.pkl", base / "a[1].pkl", base / "c*?.pkl", base / "b_0_1.pkl"])
        assert got == [b"c*?.pklc*?.pklc*?.pkl", b"a[1].pkla[1].pkla[1].pkl", b"c*?.pklc*?.pklc*?.pkl",
                       b"b_0_1.pklb_0_1.pklb_0_1.pkl"]
        assert read_many([]) == [] and write_many([]) is None
        with pytest.raises(FileNotFoundError):
            read_many([base / "b_0_1.pkl", base / "missing.pkl"])
    finally:
        if root != "local":
            remove_tree(base)
    if root != "local":  # every object went, also those whose names are glob patterns
        assert not base.fs.exists(base.path) and not base.fs.find(base.path)


def test_zarr_opens_a_local_path_without_storage_options_and_s3_with_one_get_reads():
    from remote_samsing._files import zarr_options

    assert zarr_options("/data/labels.zarr") is None
    assert zarr_options("s3://bucket/run/labels.zarr") == {"max_concurrency": 1}
    assert zarr_options("memory://run/labels.zarr") == {}


def test_a_gcs_emulator_gets_the_client_settings_it_needs_before_gcsfs_is_imported():
    """With STORAGE_EMULATOR_HOST set, the first gs:// location of a process turns off gcsfs's HNS probe
    (a 60 s hang against any emulator) and google-auth's metadata-server lookup (an address off the
    machine), before either library reads them; a user's own value wins, and without an emulator
    nothing is set."""
    import subprocess
    import sys

    code = ("import os, sys; from remote_samsing._files import location; location('gs://b/k'); "
            "print(os.environ.get('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'), os.environ.get('NO_GCE_CHECK'), "
            "'gcsfs' in sys.modules)")
    base = {k: v for k, v in os.environ.items()
            if k not in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "NO_GCE_CHECK")}

    def run(**env):
        return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run(STORAGE_EMULATOR_HOST="127.0.0.1:4443") == ["false", "true", "False"]
    assert run(STORAGE_EMULATOR_HOST="127.0.0.1:4443", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="true")[0] == "true"
    assert run(STORAGE_EMULATOR_HOST="default") == ["None", "None", "False"]


@pytest.mark.parametrize(("url", "named"), [("s3://b/run", "AWS_SECRET_ACCESS_KEY"),
                                            ("gs://b/run", "GOOGLE_APPLICATION_CREDENTIALS"),
                                            ("abfs://c/run", "AZURE_STORAGE_CONNECTION_STRING"),
                                            ("https://host/a.tif", "GDAL_CURL_CA_BUNDLE"), ("/local/path", "")])
def test_each_store_names_its_own_variables(url, named):
    from remote_samsing._files import store_variables

    assert named in store_variables(url) and (named or store_variables(url) == "")


def test_remove_tree_on_a_store_removes_every_object_of_a_large_folder_and_nothing_beside_it():
    """A store folder goes a group of objects at a time (bounded requests in flight), nested ones too."""
    from remote_samsing._files import _GROUP, location, remove_tree, write_many

    base = location("memory://rs-test-remove-tree")
    names = [f"spill/{k % 7}/f_{k}.pkl" for k in range(2 * _GROUP + 5)]
    write_many([(base / n, b"x") for n in names] + [(base / "spill2" / "kept.pkl", b"y")])
    try:
        remove_tree(base / "spill")
        assert not base.fs.exists((base / "spill").path)
        assert [location(f"memory://{p}").name for p in base.fs.find(base.path)] == ["kept.pkl"]
        remove_tree(base / "absent")  # nothing to remove: nothing happens
    finally:
        remove_tree(base)


# ---------------------------------------------------------------------------
# S3 through obstore (remote_samsing._objects): its settings and its errors, no server needed
# ---------------------------------------------------------------------------
@pytest.fixture
def aws(monkeypatch, tmp_path):
    """An environment holding only the AWS variables a test sets: no shared files, no instance role."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_an_s3_compatible_server_is_reached_at_its_endpoint_with_boto3s_credentials_and_region(aws):
    """The endpoint, region and credentials are the ones boto3 (and so s3fs) reads; a changed environment
    is read anew, and without any credentials nothing is asked of the server."""
    from remote_samsing import _objects

    aws.setenv("AWS_ACCESS_KEY_ID", "key")
    aws.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    aws.setenv("AWS_REGION", "eu-central-1")
    aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    cfg = _objects._s3_config("b")
    assert cfg["config"] == {"region": "eu-central-1", "endpoint": "http://127.0.0.1:9"}
    assert cfg["client_options"] == {"allow_http": True}
    assert cfg["credential_provider"]()["secret_access_key"] == "secret"
    aws.setenv("AWS_ENDPOINT_URL_S3", "https://objects.example.org")  # S3's own endpoint wins
    cfg = _objects._s3_config("b")
    assert cfg["config"]["endpoint"] == "https://objects.example.org" and not cfg["client_options"]["allow_http"]
    aws.delenv("AWS_ACCESS_KEY_ID")
    aws.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(PermissionError, match="no AWS credentials"):
        _objects.get("s3", "s3://b/k")


def test_on_aws_a_bucket_is_reached_in_its_own_region(aws):
    """What a bucket's region answer says (also in a refusal), else the session's."""
    import boto3
    from botocore.stub import Stubber

    from remote_samsing._objects import _bucket_region

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
    with Stubber(client) as stub:
        stub.add_response("head_bucket", {"ResponseMetadata": {"HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}}},
                          {"Bucket": "b"})
        stub.add_client_error("head_bucket", "403", http_status_code=403,
                              response_meta={"HTTPHeaders": {"x-amz-bucket-region": "ap-south-1"}})
        stub.add_client_error("head_bucket", "404", http_status_code=404)
        assert [_bucket_region(client, "b") for _ in range(3)] == ["eu-west-1", "ap-south-1", None]


def test_obstore_errors_become_the_oserrors_s3fs_raises_with_the_servers_own_words():
    from obstore.exceptions import GenericError, PermissionDeniedError

    from remote_samsing._objects import _os_error

    xml = ("Object at location k not found: Error performing GET http://h/b/k - Server returned non-2xx status "
           "code: 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified "
           "bucket does not exist</Message></Error>\n\nDebug source: ...")
    err = _os_error(FileNotFoundError(xml), "s3://b/k")  # what obstore raises for a missing object
    assert type(err) is FileNotFoundError and str(err) == "s3://b/k: The specified bucket does not exist"
    err = _os_error(PermissionDeniedError("403 Forbidden: <Error><Message>Access Denied</Message></Error>"), "s3://b/k")
    assert type(err) is PermissionError and str(err) == "Access Denied (s3://b/k)"
    # a "?" of a key is percent-encoded in the request's URL, and stays as given in the object's
    err = _os_error(GenericError("Error performing PUT http://127.0.0.1:9/b/c*%3F.pkl: error sending request\nmore"),
                    "s3://b/c*?.pkl")
    assert type(err) is OSError
    assert str(err) == "s3://b/c*?.pkl: Error performing PUT http://127.0.0.1:9/b/c*%3F.pkl: error sending request"
    err = _os_error(GenericError("500: <Error><Message></Message></Error>"), "s3://b/k")  # said nothing
    assert str(err) == "s3://b/k: 500: <Error><Message></Message></Error>"


def test_a_stores_refusal_inside_zarr_is_reported_in_one_line_with_the_servers_reason():
    """obstore's report of a refused request (what Zarr's ``ObjectStore`` raises as it is: Azurite's
    answer to a SAS that may not read, 28 lines) becomes one line: what failed, the status, and the
    server's reason; any other error keeps its first line."""
    from obstore.exceptions import PermissionDeniedError

    from remote_samsing.io import error_chain

    report = ("The operation lacked the necessary privileges to complete for path a.zarr/zarr.json: Error performing "
              "GET REDACTED in 4.41ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" "
              "encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n  <Code>AuthorizationPermissionMismatch</Code>\n"
              "  <Message>This request is not authorized to perform this operation using this permission.\n"
              "RequestId:80420806\nTime:2026-12-07T21:36:17.478Z</Message>\n</Error>\n\nDebug source:\n"
              "PermissionDenied {\n    path: \"a.zarr/zarr.json\",\n}")
    assert error_chain(PermissionDeniedError(report)) == (
        "PermissionDeniedError: The operation lacked the necessary privileges to complete for path "
        "a.zarr/zarr.json (403 Forbidden): This request is not authorized to perform this operation using this "
        "permission.")
    assert error_chain(OSError("no such file\nsecond line")) == "OSError: no such file"


@pytest.fixture
def azure(monkeypatch):
    """An environment holding only the Azure variables a test sets."""
    for k in [k for k in os.environ if k.startswith("AZURE_")]:
        monkeypatch.delenv(k)
    return monkeypatch


@pytest.mark.parametrize(("env", "config"), [
    ({"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=acc;AccountKey=a2V5==;"
                                         "BlobEndpoint=http://127.0.0.1:10000/acc/;"},
     {"account_name": "acc", "account_key": "a2V5==", "credential_type": "access_key",
      "endpoint": "http://127.0.0.1:10000/acc"}),
    ({"AZURE_STORAGE_CONNECTION_STRING": "BlobEndpoint=https://acc.blob.core.windows.net/;"
                                         "SharedAccessSignature=sv=2024&sp=rl&sig=c2ln%3D"},
     {"account_name": "acc", "sas_key": "sv=2024&sp=rl&sig=c2ln%3D", "credential_type": "sas_token",
      "endpoint": "https://acc.blob.core.windows.net"}),
    ({"AZURE_STORAGE_CONNECTION_STRING": "defaultendpointsprotocol=https;accountname=acc;accountkey=a2V5;"
                                         "endpointsuffix=core.chinacloudapi.cn"},
     {"account_name": "acc", "account_key": "a2V5", "credential_type": "access_key",
      "endpoint": "https://acc.blob.core.chinacloudapi.cn"}),
    ({"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acc;BlobEndpoint=https://acc.blob.core.windows.net"},
     {"account_name": "acc", "skip_signature": True, "endpoint": "https://acc.blob.core.windows.net"}),
    ({"AZURE_STORAGE_ACCOUNT_NAME": "acc", "AZURE_STORAGE_ACCOUNT_KEY": "a2V5"},
     {"account_name": "acc", "account_key": "a2V5", "credential_type": "access_key"}),
    ({"AZURE_STORAGE_ACCOUNT_NAME": "acc", "AZURE_STORAGE_SAS_TOKEN": "?sv=2024&sig=c2ln"},
     {"account_name": "acc", "sas_key": "sv=2024&sig=c2ln", "credential_type": "sas_token"}),
])
def test_azure_is_reached_with_what_the_connection_string_or_the_account_variables_give(azure, env, config):
    from remote_samsing import _objects

    for k, v in env.items():
        azure.setenv(k, v)
    cfg = _objects._azure_config()
    assert cfg["config"] == config
    assert cfg.get("client_options", {}).get("allow_http", False) == config.get("endpoint", "").startswith("http:")


def test_azure_without_a_key_uses_azure_identity_and_without_an_account_says_so(azure):
    from obstore.auth.azure import AzureCredentialProvider

    from remote_samsing.exceptions import ConfigError

    from remote_samsing import _objects

    with pytest.raises(PermissionError, match="no Azure credentials"):
        _objects.get("az", "az://container/k")
    azure.setenv("AZURE_STORAGE_CONNECTION_STRING", "DefaultEndpointsProtocol=https;AccountKey=a2V5")
    with pytest.raises(ConfigError, match="names neither AccountName nor BlobEndpoint"):
        _objects.get("az", "az://container/k")
    azure.delenv("AZURE_STORAGE_CONNECTION_STRING")
    azure.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acc")
    cfg = _objects._azure_config()
    assert cfg["config"] == {"account_name": "acc"}
    assert isinstance(cfg["credential_provider"], AzureCredentialProvider)


def test_the_sas_given_is_the_credential_used_whatever_else_the_environment_holds(azure, monkeypatch):
    """A pod's workload identity and an account key in the environment (read by obstore itself) do not
    displace the connection string's SAS: the request goes to the blob, not to a token endpoint."""
    import socket

    from remote_samsing import _objects

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]  # closed once the block ends: nothing answers there
    monkeypatch.setattr(_objects, "_RETRY", {"max_retries": 0})
    azure.setenv("AZURE_STORAGE_CONNECTION_STRING",
                 f"BlobEndpoint=http://127.0.0.1:{port}/acc;SharedAccessSignature=sv=2024&sig=c2VjcmV0")
    azure.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000000")
    azure.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    azure.setenv("AZURE_FEDERATED_TOKEN_FILE", __file__)
    azure.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    with pytest.raises(OSError) as err:
        _objects.get("az", "az://container/k")
    # obstore writes a SAS request's URL as REDACTED; a token request would be its own error
    assert "Error performing GET REDACTED" in str(err.value) and "token" not in str(err.value).lower()
    assert "c2VjcmV0" not in str(err.value)


def test_an_error_names_no_query_string_a_sas_could_be_in():
    from obstore.exceptions import GenericError

    from remote_samsing._objects import _os_error

    err = _os_error(GenericError("Error performing PUT http://h/acc/c/k?sv=2024&sig=c2VjcmV0 in 3ms\nmore"), "az://c/k")
    assert str(err) == "az://c/k: Error performing PUT http://h/acc/c/k in 3ms" and "c2VjcmV0" not in str(err)


def test_a_url_that_names_its_account_stays_on_fsspec_whole():
    """``abfs://container@account...`` carries its account in the URL, which fsspec reads and obstore
    would not: every request for it then goes through adlfs, so no two clients reach two accounts."""
    pytest.importorskip("adlfs")
    from remote_samsing._files import _fast, location

    assert not _fast(location("abfs://c@acc.dfs.core.windows.net/run/x.json"))
    assert _fast(location("abfs://c/run/x.json")) and _fast(location("s3://b/run/x.json"))
    assert not _fast(location("gs://b/run/x.json"))
