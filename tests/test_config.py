"""Profiles: packaged YAML + schema, Dask config merging, validation messages, ClusterSpec."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dask.config
import jsonschema
import pytest
import yaml

import ctrlstack
from ctrlstack import config
from ctrlstack._config_check import describe, packaged_defaults, schema
from ctrlstack.config import ClusterSpec, ConfigError, get_profile

PACKAGE = Path(ctrlstack.__file__).parent
PACKAGED_LOCAL = yaml.safe_load((PACKAGE / "ctrlstack.yaml").read_text())["ctrlstack"]["profiles"][
    "local"
]


@pytest.fixture(autouse=True)
def isolated_config() -> Iterator[None]:
    """Restore the global dask config after each test (refresh() and set() both mutate it)."""
    saved = copy.deepcopy(dask.config.config)
    try:
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def configure(settings: dict[str, Any]) -> None:
    """``dask.config.set`` without a context manager; the autouse fixture undoes it."""
    dask.config.set(settings)


def refresh(*paths: Path) -> None:
    """Re-read config from only ``paths`` (never the developer's ~/.config/dask) and os.environ."""
    dask.config.refresh(paths=[str(p) for p in paths])


def write_yaml(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------- schema vs YAML
def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"].endswith("/draft/2020-12/schema")


def test_packaged_defaults_validate_against_schema() -> None:
    defaults = yaml.safe_load((PACKAGE / "ctrlstack.yaml").read_text())
    jsonschema.Draft202012Validator(schema()).validate(defaults)
    config.validate_config(defaults)


def test_schema_rejects_what_validation_rejects() -> None:
    """The raw schema is usable by other doors (REST, forms) on its own."""
    bad = copy.deepcopy(packaged_defaults())
    bad["ctrlstack"]["profiles"]["local"]["policy"] = "l4"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema()).validate(bad)


def _resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    assert ref.startswith("#/"), ref
    target: Any = schema()
    for part in ref[2:].split("/"):
        target = target[part]
    return target


def test_schema_is_complete() -> None:
    """Every YAML key is in the schema and every schema property has a YAML default.

    Like distributed's ``test_schema_is_complete``: walk both trees together; a mapping-valued
    schema (``additionalProperties``, e.g. profiles by name) is checked entry by entry.
    """
    seen: list[str] = []

    def walk(conf: Any, node: Mapping[str, Any], where: str) -> None:
        node = _resolve(node)
        if not isinstance(conf, dict):
            return
        props = node.get("properties")
        if props is not None:
            assert set(conf) == set(props), (
                f"{where}: YAML keys {sorted(conf)} != schema properties {sorted(props)}"
            )
            for key, value in conf.items():
                seen.append(f"{where}.{key}")
                walk(value, props[key], f"{where}.{key}")
        elif isinstance(node.get("additionalProperties"), dict):
            for key, value in conf.items():
                walk(value, node["additionalProperties"], f"{where}.{key}")

    walk(packaged_defaults(), schema(), "")
    assert ".ctrlstack.profiles.local.worker-options.local-directory" in seen
    assert len(seen) > 15


def test_every_schema_property_has_a_description() -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.get("properties", {}).items():
                if not str(sub.get("description", "")).strip():
                    missing.append(f"{where}.{key}")
                walk(sub, f"{where}.{key}")
            for key in ("$defs", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    walk(node[key] if key != "$defs" else {"properties": node[key]}, where)

    walk(schema(), "")
    assert not missing, f"schema properties without description: {missing}"


def test_spec_fields_match_schema_profile_fields() -> None:
    spec = get_profile("local")
    assert set(spec.to_dict()) == set(schema()["$defs"]["profile"]["properties"])


# ----------------------------------------------------------------------------- Dask merging
def test_packaged_defaults_survive_refresh() -> None:
    refresh()
    assert dask.config.get("ctrlstack.default-profile") == "local"
    assert config.profile_names() == ["local", "pbs-cpu", "slurm-cpu"]
    spec = get_profile()
    assert spec.profile == "local"
    assert spec.to_dict() == {
        **PACKAGED_LOCAL,
        "worker-options": dict(PACKAGED_LOCAL["worker-options"]),
        # the backend section, merged over ctrlstack.backends.local
        "local": {"host": "127.0.0.1"},
    }


def test_override_with_dask_config_set() -> None:
    with dask.config.set({"ctrlstack.profiles.local.workers": 3, "ctrlstack.launch-timeout": 5}):
        assert get_profile().workers == 3
        assert config.launch_timeout() == 5.0
    assert get_profile().workers == "auto"


def test_user_yaml_adds_a_profile_with_defaults_filled_in(tmp_path: Path) -> None:
    write_yaml(
        tmp_path,
        "ctrlstack.yaml",
        """
        ctrlstack:
          profiles:
            big:
              workers: 4
              threads: 8
              memory_limit: 16 GiB     # underscore spelling is accepted
              env: {OMP_PROC_BIND: "close"}
        """,
    )
    refresh(tmp_path)
    assert config.profile_names() == ["big", "local", "pbs-cpu", "slurm-cpu"]
    big = get_profile("big")
    assert (big.workers, big.threads, big.memory_limit) == (4, 8, "16 GiB")
    assert big.env == {"OMP_PROC_BIND": "close"}
    assert big.policy == PACKAGED_LOCAL["policy"]  # left out -> packaged local's value
    assert get_profile("local").workers == "auto"  # other profiles untouched


def test_user_file_beats_site_file(tmp_path: Path) -> None:
    site, user = tmp_path / "etc-dask", tmp_path / "home-dask"
    write_yaml(site, "site.yaml", "ctrlstack: {profiles: {big: {workers: 2, threads: 4}}}\n")
    write_yaml(user, "mine.yaml", "ctrlstack: {profiles: {big: {workers: 3}}}\n")
    refresh(site, user)  # later paths win, as in dask.config.paths (/etc/dask ... ~/.config/dask)
    big = get_profile("big")
    assert (big.workers, big.threads) == (3, 4)


def test_env_vars_override_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(tmp_path, "c.yaml", "ctrlstack: {profiles: {big: {workers: 2}}}\n")
    monkeypatch.setenv("DASK_CTRLSTACK__DEFAULT_PROFILE", "big")
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__BIG__WORKERS", "5")
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__BIG__MEMORY_LIMIT", "2 GiB")
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__BIG__POLICY", "none")  # Dask reads it as None
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__BIG__ADAPT", "{'minimum': 1, 'maximum': 6}")
    monkeypatch.setenv("DASK_CTRLSTACK__LAUNCH_TIMEOUT", "12.5")
    refresh(tmp_path)
    spec = get_profile()
    assert spec.profile == "big"
    assert (spec.workers, spec.memory_limit, spec.policy, spec.adapt) == (
        5,
        "2 GiB",
        "none",
        (1, 6),
    )
    assert config.launch_timeout() == 12.5


def test_env_var_profile_with_dashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Env vars can only spell ``slurm_big``; ``get_profile("slurm-big")`` still finds it."""
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__GPU_NODE__TASK_THREADS", "1")
    monkeypatch.setenv("DASK_CTRLSTACK__PROFILES__GPU_NODE__THREADS", "4")
    refresh()
    assert "gpu_node" in config.profile_names()
    spec = get_profile("gpu-node")
    assert (spec.profile, spec.task_threads, spec.threads) == ("gpu_node", 1, 4)


# ----------------------------------------------------------------------------- validation
def test_message_names_profile_field_value_and_choices() -> None:
    configure({"ctrlstack.profiles.local.policy": "l4"})
    with pytest.raises(ConfigError) as info:
        get_profile("local")
    assert str(info.value) == (
        "profile 'local': field 'policy' = 'l4' is not allowed; "
        "choose one of l3, numa, socket, core, none (from dask.config.set() in this process)"
    )
    assert (info.value.profile, info.value.field, info.value.value) == ("local", "policy", "l4")
    assert info.value.source == "dask.config.set() in this process"


BAD_FIELDS = [
    ("backend", "condor", "backend", "one of local, slurm, pbs"),
    ("workers", 0, "workers", "an integer >= 1 or 'auto'"),
    ("workers", "many", "workers", "an integer >= 1 or 'auto'"),
    ("threads", 2.5, "threads", "an integer >= 1 or 'auto'"),
    ("task-threads", 0, "task-threads", "an integer >= 1 or null"),
    ("policy", "l4", "policy", "one of l3, numa, socket, core, none"),
    ("smt", "yes", "smt", "true or false"),
    ("memory-limit", -1, "memory-limit", "an integer >= 0"),
    ("memory-limit", "4 GB of RAM", "memory-limit", "such as '4 GiB'"),
    ("memory-limit", "-4GB", "memory-limit", "a size >= 0"),
    ("dashboard", "on", "dashboard", "true or false"),
    ("idle-timeout", 0, "idle-timeout", "a number > 0 or null"),
    ("adapt", {"minimum": 4, "maximum": 2}, "adapt", "minimum <= maximum"),
    ("adapt", {"minimum": 1}, "adapt.maximum", "an integer >= 1"),
    ("adapt", {"minimum": -1, "maximum": 2}, "adapt.minimum", "an integer >= 0"),
    ("adapt", 3, "adapt", "a mapping with keys minimum, maximum or null"),
    ("env", {"N": 1}, "env.N", "a string"),
    ("env", {"BAD-NAME": "1"}, "env", "^[A-Za-z_][A-Za-z0-9_]*$"),
    ("env", ["A=1"], "env", "a mapping"),
    ("worker-options", {"resources": {"GPU": -1}}, "worker-options.resources.GPU", ">= 0"),
    ("worker-options", {"nthreads": 8}, "worker-options.nthreads", "resources, local-directory"),
]


@pytest.mark.parametrize(("key", "value", "field", "allowed"), BAD_FIELDS)
def test_each_bad_field_is_named(key: str, value: Any, field: str, allowed: str) -> None:
    configure({f"ctrlstack.profiles.local.{key}": value})
    with pytest.raises(ConfigError) as info:
        get_profile("local")
    message = str(info.value)
    assert message.startswith("profile 'local': ")
    assert repr(field) in message
    assert allowed in message
    assert info.value.field == field
    assert "override" not in message


@pytest.mark.parametrize(("key", "value", "field", "allowed"), BAD_FIELDS)
def test_bad_override_is_named_with_its_python_name(
    key: str, value: Any, field: str, allowed: str
) -> None:
    python_name = key.replace("-", "_")
    with pytest.raises(ConfigError) as info:
        get_profile("local", **{python_name: value})
    assert info.value.field == field
    assert allowed in str(info.value)
    assert f"override {python_name}=" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"threads": 2, "task_threads": 4}, "task-threads", "<= threads (2)"),
        ({"policy": "core", "threads": 4}, "threads", "policy 'core'"),
    ],
)
def test_cross_field_rules(overrides: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        get_profile("local", **overrides)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_cross_field_rules_allow_auto() -> None:
    assert get_profile("local", task_threads=64).task_threads == 64  # threads auto: planner checks
    assert get_profile("local", policy="core", threads=1).threads == 1


def test_unknown_field_in_profile_suggests_the_right_one() -> None:
    configure({"ctrlstack.profiles.local.wokers": 2})
    with pytest.raises(ConfigError, match=r"unknown field 'wokers' \(did you mean 'workers'"):
        get_profile("local")


def test_unknown_override_lists_allowed_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_profile("local", wrokers=2)
    message = str(info.value)
    assert "unknown override 'wrokers'" in message
    assert "did you mean 'workers'" in message
    for name in ("task_threads", "memory_limit", "idle_timeout", "worker_options"):
        assert name in message


def test_unknown_profile_lists_known_profiles_and_sources() -> None:
    configure({"ctrlstack.profiles.big": {"workers": 2}})
    with pytest.raises(ConfigError) as info:
        get_profile("bgi")
    message = str(info.value)
    assert "unknown profile 'bgi' (did you mean 'big'?)" in message
    assert "known profiles: big, local" in message
    assert all(str(p) in message for p in dask.config.paths)
    assert "DASK_CTRLSTACK__PROFILES__" in message


def test_unknown_default_profile_says_where_the_name_came_from() -> None:
    configure({"ctrlstack.default-profile": "gone"})
    with pytest.raises(
        ConfigError,
        match=r"'gone' \(named by ctrlstack.default-profile from dask.config.set\(\) in this",
    ):
        get_profile()


def test_profile_that_is_not_a_mapping() -> None:
    configure({"ctrlstack.profiles.big": 3})
    with pytest.raises(ConfigError, match="profile 'big': expected a mapping of fields"):
        get_profile("big")


def test_field_given_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        ClusterSpec.from_dict({"memory-limit": "1 GiB", "memory_limit": "2 GiB"}, profile="p")


def test_bad_input_changes_nothing() -> None:
    before = copy.deepcopy(dask.config.config)
    for overrides in ({"policy": "l4"}, {"bogus": 1}, {"adapt": (3, 1)}):
        with pytest.raises(ConfigError):
            get_profile("local", **overrides)
    with pytest.raises(ConfigError):
        get_profile("nope")
    assert dask.config.config == before


def test_overrides_are_validated_together_with_the_profile() -> None:
    """An override can repair a broken field; the rest of the profile is still checked."""
    with dask.config.set({"ctrlstack.profiles.local.workers": 0}):
        assert get_profile("local", workers=2).workers == 2
        with pytest.raises(ConfigError, match="'workers'"):
            get_profile("local", threads=2)


def test_validate_config_accepts_the_defaults() -> None:
    config.validate_config()


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"ctrlstack.profiles.broken": {"smt": 1}}, "profile 'broken': field 'smt'"),
        ({"ctrlstack.lauch-timeout": 3}, r"unknown field 'ctrlstack.lauch-timeout'"),
        ({"ctrlstack.profiles.a b": {}}, "field 'ctrlstack.profiles' has key 'a b'"),
        ({"ctrlstack.default-profile": "missing"}, "'ctrlstack.default-profile' = 'missing'"),
        ({"ctrlstack.state-dir": 3}, "'ctrlstack.state-dir' = 3"),
    ],
)
def test_validate_config_checks_every_profile_and_top_level_key(
    settings: dict[str, Any], match: str
) -> None:
    configure(settings)
    with pytest.raises(ConfigError, match=match):
        config.validate_config()


# ----------------------------------------------------------------------------- ClusterSpec
def test_overrides_use_python_names_and_shapes() -> None:
    spec = get_profile(
        "local",
        workers=2.0,
        task_threads=1,
        memory_limit=" 2GiB ",
        adapt=(0, 4),
        idle_timeout=30,
        worker_options={"local_directory": "/scratch"},
    )
    assert spec.workers == 2
    assert isinstance(spec.workers, int)
    assert (spec.task_threads, spec.memory_limit, spec.adapt) == (1, "2GiB", (0, 4))
    assert spec.idle_timeout == 30.0
    assert isinstance(spec.idle_timeout, float)
    assert spec.worker_options == {"resources": {}, "local_directory": "/scratch"}
    assert spec.worker_kwargs() == {"local_directory": "/scratch"}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"workers": 3, "threads": 4, "task_threads": 2, "memory_limit": 2**30},
        {"policy": "none", "smt": True, "dashboard": False, "idle_timeout": 1.5},
        {"adapt": (0, 8), "env": {"A": "1"}, "worker_options": {"resources": {"GPU": 1}}},
    ],
)
def test_to_dict_from_dict_round_trip(overrides: dict[str, Any]) -> None:
    spec = get_profile("local", **overrides)
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert "profile" not in data
    assert all("_" not in key for key in data)
    again = ClusterSpec.from_dict(json.loads(json.dumps(data)), profile=spec.profile)
    assert again == spec
    assert hash(again) == hash(spec)


def test_from_dict_fills_missing_fields_and_accepts_underscores() -> None:
    spec = ClusterSpec.from_dict({"workers": 2, "task_threads": 1}, profile="adhoc")
    assert (spec.profile, spec.workers, spec.task_threads) == ("adhoc", 2, 1)
    assert spec.policy == PACKAGED_LOCAL["policy"]
    with pytest.raises(ConfigError, match="profile 'adhoc': field 'workers'"):
        ClusterSpec.from_dict({"workers": -2}, profile="adhoc")


def test_packaged_local_is_the_field_default_even_if_the_user_changes_local() -> None:
    with dask.config.set({"ctrlstack.profiles.local.smt": True, "ctrlstack.profiles.big": {}}):
        assert get_profile("local").smt is True
        assert get_profile("big").smt is PACKAGED_LOCAL["smt"]


# ------------------------------------------------------------------ state dir, launch timeout
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dir_is_created_0700(tmp_path: Path) -> None:
    target = tmp_path / "a" / "state"
    with dask.config.set({"ctrlstack.state-dir": str(target)}):
        assert config.state_dir() == target
    assert target.is_dir()
    assert _mode(target) == 0o700


def test_state_dir_too_open_is_tightened(tmp_path: Path) -> None:
    target = tmp_path / "state"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    with dask.config.set({"ctrlstack.state-dir": str(target)}):
        config.state_dir()
    assert _mode(target) == 0o700


def test_state_dir_default_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert config.state_dir() == tmp_path / "xdg" / "ctrlstack"
    assert _mode(tmp_path / "xdg" / "ctrlstack") == 0o700
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config.state_dir() == tmp_path / "home" / ".local" / "state" / "ctrlstack"


def test_state_dir_expands_user_and_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SCRATCH", str(tmp_path))
    with dask.config.set({"ctrlstack.state-dir": "$MY_SCRATCH/cs"}):
        assert config.state_dir() == tmp_path / "cs"


@pytest.mark.parametrize("value", ["relative/dir", 5, ""])
def test_bad_state_dir(value: Any) -> None:
    configure({"ctrlstack.state-dir": value})
    with pytest.raises(ConfigError) as info:
        config.state_dir()
    assert info.value.field == "ctrlstack.state-dir"


def test_state_dir_blocked_by_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    configure({"ctrlstack.state-dir": str(blocker)})
    with pytest.raises(ConfigError, match="a file is in the way"):
        config.state_dir()


@pytest.mark.parametrize("value", [0, -1, "soon", True])
def test_bad_launch_timeout(value: Any) -> None:
    configure({"ctrlstack.launch-timeout": value})
    with pytest.raises(ConfigError) as info:
        config.launch_timeout()
    assert info.value.field == "ctrlstack.launch-timeout"
    assert "a number > 0" in str(info.value)


def test_launch_timeout_default() -> None:
    refresh()
    assert config.launch_timeout() == float(packaged_defaults()["ctrlstack"]["launch-timeout"])


# ---------------------------------------------------------------------------- small pieces
@pytest.mark.parametrize(
    ("node", "text"),
    [
        ({"type": "integer", "minimum": 1}, "an integer >= 1"),
        (
            {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]},
            "an integer >= 1 or 'auto'",
        ),
        ({"type": ["number", "null"], "exclusiveMinimum": 0}, "a number > 0 or null"),
        ({"enum": ["a", "b"]}, "one of a, b"),
        ({"type": "boolean"}, "true or false"),
    ],
)
def test_describe(node: dict[str, Any], text: str) -> None:
    assert describe(node) == text


def test_import_is_cheap() -> None:
    """No jsonschema (2 s with rfc3987-syntax), numba or Jupyter pieces at import time."""
    code = (
        "import sys, ctrlstack.config as c; "
        "heavy = ['jsonschema', 'numba', 'numpy', 'ipywidgets', 'jupyterlab', 'jupyter_server']; "
        "print([m for m in heavy if m in sys.modules])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_hand_made_spec_round_trips() -> None:
    """Backends and tests build specs directly; those must survive to_dict/from_dict too."""
    spec = ClusterSpec(
        profile="adhoc",
        backend="local",
        workers=2,
        threads=1,
        task_threads=None,
        policy="core",
        smt=False,
        memory_limit="auto",
        dashboard=False,
        idle_timeout=None,
        adapt=None,
        env={},
        options={"host": "127.0.0.1"},
    )
    assert spec.worker_options == {"resources": {}, "local_directory": None}
    assert ClusterSpec.from_dict(spec.to_dict(), profile="adhoc") == spec
    with pytest.raises(ValueError, match="unknown keys"):
        ClusterSpec(**{**vars(spec), "worker_options": {"nthreads": 2}})


def test_defaults_survive_a_config_block_entered_before_registration() -> None:
    """`with dask.config.set({"ctrlstack.x": ...})` entered while the namespace did not exist
    removes the namespace on exit; the packaged profiles must come back by themselves."""
    import dask

    from ctrlstack.config import get_profile

    saved = dask.config.config.pop("ctrlstack")
    try:
        with dask.config.set({"ctrlstack.state-dir": "/tmp/ctrlstack-test-state"}):
            pass
        assert "ctrlstack" not in dask.config.config
        assert get_profile("local").backend == "local"
    finally:
        dask.config.config["ctrlstack"] = saved


# -------------------------------------------------------- bad config sources, named by file
@pytest.fixture
def dask_dirs(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make ``dirs`` Dask's config directories (as ``dask.config.paths``) and re-read them."""

    def use(*dirs: Path) -> None:
        paths = [str(d) for d in dirs]
        monkeypatch.setattr(dask.config, "paths", paths)
        dask.config.refresh(paths=paths)

    return use


def _check_all(expected_source: str, field: str) -> None:
    """Every function that reads the section fails the same way, in one line."""
    for call in (config.profile_names, get_profile, config.launch_timeout, config.state_dir):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert info.value.source == expected_source
        assert message.endswith(f"(from {expected_source})"), message
        assert info.value.field == field
        assert f"field {field!r} = " in message


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        ("ctrlstack: [1, 2]\n", "ctrlstack", "expected a mapping of ctrlstack settings"),
        ("ctrlstack:\n", "ctrlstack", "expected a mapping of ctrlstack settings"),
        ("ctrlstack: {profiles: 5}\n", "ctrlstack.profiles", "a mapping of profile names"),
        ("ctrlstack: {profiles: [a]}\n", "ctrlstack.profiles", "a mapping of profile names"),
        ("ctrlstack: {default-profile: 7}\n", "ctrlstack.default-profile", "a non-empty string"),
        ("ctrlstack: {launch-timeout: x}\n", "ctrlstack.launch-timeout", "a number > 0"),
        ("ctrlstack: {launch_timeout: -1}\n", "ctrlstack.launch-timeout", "a number > 0"),
        ("ctrlstack: {state-dir: 5}\n", "ctrlstack.state-dir", "a non-empty string or null"),
    ],
)
def test_bad_section_in_a_file_is_named_with_the_file(
    tmp_path: Path, dask_dirs: Callable[..., None], text: str, field: str, allowed: str
) -> None:
    site, user = tmp_path / "site", tmp_path / "user"
    write_yaml(site, "a.yaml", "ctrlstack: {profiles: {big: {workers: 2}}}\n")
    bad = write_yaml(user, "b.yaml", text)
    write_yaml(user, "c.yaml", "distributed: {comm: {timeouts: {connect: 30s}}}\n")
    dask_dirs(site, user)
    _check_all(str(bad), field)
    with pytest.raises(ConfigError, match=allowed):
        config.profile_names()


def test_the_file_holding_the_live_value_is_named(
    tmp_path: Path, dask_dirs: Callable[..., None]
) -> None:
    """Two files set the key; the later one wins in Dask, so it is the one to fix."""
    write_yaml(tmp_path / "site", "a.yaml", "ctrlstack: {launch-timeout: soon}\n")
    user = write_yaml(tmp_path / "user", "a.yaml", "ctrlstack: {launch-timeout: later}\n")
    dask_dirs(tmp_path / "site", tmp_path / "user")
    _check_all(str(user), "ctrlstack.launch-timeout")
    # ... and a good value in the later file overrides a bad one, as for any Dask setting.
    write_yaml(tmp_path / "user", "a.yaml", "ctrlstack: {launch-timeout: 5}\n")
    dask_dirs(tmp_path / "site", tmp_path / "user")
    assert config.launch_timeout() == 5.0


def test_bad_value_from_an_environment_variable_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, dask_dirs: Callable[..., None], tmp_path: Path
) -> None:
    write_yaml(tmp_path, "a.yaml", "ctrlstack: {launch-timeout: 5}\n")
    monkeypatch.setenv("DASK_CTRLSTACK__LAUNCH_TIMEOUT", "whenever")
    dask_dirs(tmp_path)
    _check_all("environment variable DASK_CTRLSTACK__LAUNCH_TIMEOUT", "ctrlstack.launch-timeout")


def test_bad_value_from_dask_config_set_is_named_as_such() -> None:
    configure({"ctrlstack.profiles": 5})
    _check_all("dask.config.set() in this process", "ctrlstack.profiles")


def test_set_block_before_registration_still_heals_but_reports_bad_values() -> None:
    """The self-healing re-adds the packaged defaults *under* what is set, never over it."""
    saved = dask.config.config.pop("ctrlstack")
    try:
        with dask.config.set({"ctrlstack.launch-timeout": 7}):
            assert config.launch_timeout() == 7.0
            assert get_profile("local").backend == "local"
        assert "ctrlstack" not in dask.config.config
        with (
            dask.config.set({"ctrlstack.profiles": 5}),
            pytest.raises(ConfigError, match=r"'ctrlstack.profiles' = 5"),
        ):
            config.profile_names()
    finally:
        dask.config.config["ctrlstack"] = saved


def test_profile_that_is_not_a_mapping_names_its_file(
    tmp_path: Path, dask_dirs: Callable[..., None]
) -> None:
    bad = write_yaml(tmp_path, "p.yaml", "ctrlstack: {profiles: {big: 3, local: [1]}}\n")
    dask_dirs(tmp_path)
    assert config.profile_names() == ["big", "local", "pbs-cpu", "slurm-cpu"]  # no validation
    for name in ("big", "local"):
        with pytest.raises(ConfigError) as info:
            get_profile(name)
        assert str(info.value).startswith(f"profile {name!r}: expected a mapping of fields")
        assert info.value.source == str(bad)
        assert str(info.value).endswith(f"(from {bad})")


def test_bad_profile_field_names_its_file_but_an_override_does_not(
    tmp_path: Path, dask_dirs: Callable[..., None]
) -> None:
    bad = write_yaml(tmp_path, "p.yaml", "ctrlstack: {profiles: {big: {policy: l4}}}\n")
    write_yaml(tmp_path, "q.yaml", "ctrlstack: {profiles: {big: {adapt: {minimum: 1}}}}\n")
    dask_dirs(tmp_path)
    with pytest.raises(ConfigError) as info:
        get_profile("big", adapt=None)
    assert info.value.field == "policy"
    assert info.value.source == str(bad)
    with pytest.raises(ConfigError) as info:
        get_profile("big", policy="core")
    assert info.value.field == "adapt.maximum"  # missing: found through its parent
    assert info.value.source == str(tmp_path / "q.yaml")
    with pytest.raises(ConfigError) as info:
        get_profile("local", policy="l5")
    assert info.value.source is None
    assert str(info.value).endswith("(from the override policy=...)")


def test_unknown_default_profile_names_the_file(
    tmp_path: Path, dask_dirs: Callable[..., None]
) -> None:
    bad = write_yaml(tmp_path, "p.yaml", "ctrlstack: {default-profile: bgi}\n")
    dask_dirs(tmp_path)
    with pytest.raises(
        ConfigError, match=rf"'bgi' \(named by ctrlstack.default-profile from {bad}\)"
    ):
        get_profile()


def test_relative_state_dir_names_its_file(tmp_path: Path, dask_dirs: Callable[..., None]) -> None:
    bad = write_yaml(tmp_path, "p.yaml", "ctrlstack: {state-dir: relative/state}\n")
    dask_dirs(tmp_path)
    with pytest.raises(ConfigError, match="an absolute path") as info:
        config.state_dir()
    assert info.value.source == str(bad)


def test_malformed_file_next_to_the_source_does_not_hide_it(
    tmp_path: Path, dask_dirs: Callable[..., None]
) -> None:
    """A file that broke after Dask read it cannot hold the live value; it is skipped."""
    bad = write_yaml(tmp_path, "a.yaml", "ctrlstack: {profiles: 5}\n")
    later = write_yaml(tmp_path, "b.yaml", "x: 1\n")
    dask_dirs(tmp_path)
    later.write_text("x: [1\n")
    _check_all(str(bad), "ctrlstack.profiles")


# ------------------------------------------------------ malformed files at `import dask`
def _import_config(dask_config: Path, code: str = "") -> subprocess.CompletedProcess[str]:
    """``import ctrlstack.config`` in a fresh interpreter whose only extra config is ``dask_config``."""
    script = textwrap.dedent(
        """
        import sys
        from ctrlstack._config_check import ConfigError
        try:
            import ctrlstack.config
        except ConfigError as exc:
            print("ConfigError:", exc)
            print("source:", exc.source)
            print("dask" in sys.modules, "ctrlstack.config" in sys.modules)
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_CONFIG"] = str(dask_config)
    return subprocess.run(
        [sys.executable, "-c", script + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def test_malformed_yaml_is_one_line_naming_file_line_and_way_out(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path, "bad.yaml", "ctrlstack:\n  profiles: {a: [1, 2}\n")
    result = _import_config(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"ConfigError: Dask config file {bad} is not valid YAML: expected ',' or ']', but got "
        "'}' at line 2, column 22 (while parsing a flow sequence at line 2, column 17); fix it, "
        f"or move it out of {tmp_path} (Dask reads every *.yaml, *.yml and *.json file there)"
    )
    assert lines[1] == f"source: {bad}"
    assert lines[2] == "False False"  # neither half-imported module is left behind


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    bad = write_yaml(tmp_path, "list.yml", "- a\n- b\n")
    result = _import_config(bad)  # DASK_CONFIG may name the file itself
    assert result.stdout.splitlines()[0] == (
        f"ConfigError: Dask config file {bad} is not a mapping at the top level (it is a list); "
        "fix it, or point DASK_CONFIG elsewhere"
    )


def test_second_import_reports_again_then_works_once_fixed(tmp_path: Path) -> None:
    """After the failed import, importing again gives the same error (not an AttributeError from
    a half-imported dask), and once the file is fixed everything imports and works."""
    bad = write_yaml(tmp_path, "bad.yaml", "ctrlstack: {profiles: [\n")
    code = f"""
        first = exc_text = None
        try:
            import ctrlstack.config
        except ConfigError as exc:
            exc_text = str(exc)
        print("same error again:", exc_text is not None and "{bad}" in exc_text)
        import os
        os.rename("{bad}", "{bad}.off")
        import ctrlstack.config as c
        import dask, dask.typing, dask.config
        print(dask.typing.__name__, c.get_profile().profile, dask.config.get("ctrlstack.launch-timeout"))
        print(dask.delayed(sum)([1, 2, 3]).compute())
        """
    result = _import_config(tmp_path, code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"ConfigError: Dask config file {bad} is not valid YAML")
    assert lines[3:] == ["same error again: True", "dask.typing local 60", "6"]


def test_bad_section_read_at_import_is_not_papered_over(tmp_path: Path) -> None:
    """Registering the packaged defaults must not replace a file's ``ctrlstack: [1, 2]``."""
    bad = write_yaml(tmp_path, "bad.yaml", "ctrlstack: {profiles: {local: 3}}\n")
    code = """
        try:
            ctrlstack.config.get_profile("local")
        except ConfigError as exc:
            print(exc.source)
        """
    result = _import_config(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(bad)]


def test_other_value_errors_are_not_mistaken_for_a_malformed_file() -> None:
    from ctrlstack._config_check import malformed_file_error

    assert malformed_file_error(ValueError("something else")) is None
