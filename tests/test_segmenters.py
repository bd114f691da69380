"""The segmenter registry and the resources segmenters ask for."""

import pytest

from remote_samsing.exceptions import ConfigError
from remote_samsing.segmenters import DEVICES, available_segmenters, get_segmenter, segment_resources


def test_segment_resources():
    class GPUSeg:
        resources = {"GPU": 1}

        def segment(self, block, *, block_info):  # pragma: no cover - never called
            return block[..., 0]

    assert segment_resources("sam2") == {"GPU": 1}
    assert segment_resources("felzenszwalb") is None
    assert segment_resources(GPUSeg()) == {"GPU": 1}
    assert segment_resources(object()) is None


def test_registry_names_the_built_in_segmenters():
    assert {"felzenszwalb", "slic", "sam2"} <= set(available_segmenters())
    assert DEVICES == ("auto", "cuda", "cpu")
    with pytest.raises(ConfigError, match="nope"):
        get_segmenter("nope")


def test_the_registry_does_not_import_the_testing_module():
    """No package module imports ``remote_samsing.testing`` (it imports the registry: no cycle);
    a fresh process finds the test segmenters by name through the environment alone."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    import remote_samsing

    package = Path(remote_samsing.__file__).parent
    importers = []
    for path in package.rglob("*.py"):
        if path.name == "testing.py":
            continue
        rel = path.relative_to(package.parent).with_suffix("").parts
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = rel[: len(rel) - node.level] if node.level else ()
                names = [".".join((*base, node.module or ""))] + [
                    ".".join(filter(None, (*base, node.module, a.name))) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n.strip(".") == "remote_samsing.testing" for n in names):
                importers.append(str(path.relative_to(package)))
    assert importers == []

    code = ("import sys; from remote_samsing.segmenters import available_segmenters, get_segmenter; "
            "names = available_segmenters(); assert 'remote_samsing.testing' not in sys.modules; "
            "get_segmenter('noop'); print(' '.join(names))")
    env = dict(os.environ)  # tests/conftest.py registered the test segmenters: the variable is set
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert {"threshold", "noop", "felzenszwalb"} <= set(out.stdout.split())

    env["REMOTE_SAMSING_TEST_SEGMENTERS"] = ""
    code = ("import sys, remote_samsing.segmenters as s; print(' '.join(s.available_segmenters())); "
            "print('remote_samsing.testing' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    names, imported = out.stdout.splitlines()
    assert "threshold" not in names.split() and imported == "False"


def test_a_malformed_environment_entry_is_one_config_error(monkeypatch):
    monkeypatch.setenv("REMOTE_SAMSING_TEST_SEGMENTERS", "1")
    with pytest.raises(ConfigError, match="REMOTE_SAMSING_TEST_SEGMENTERS"):
        available_segmenters()
