"""Loading, saving and watching the agents file; every error path names file, line, key, value."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from orchestrator.config import Agent, Config
from orchestrator.configfile import (
    ConfigSnapshot,
    dump_config,
    load_config,
    parse_config,
    save_config,
    update_config,
    validate_config,
)
from orchestrator.errors import ConfigError

GOOD = """\
settings:
  default_timeout: 120
agents:
  infra:
    directory: /srv/infra
    description: Docker hosts
    timeout: 600
    resources: {memory: 1g}
    secrets:
      DB_URL: {env: INFRA_DB_URL}
      KUBECONFIG: {file: ~/.kube/staging}
  web:
    directory: /srv/web
    dispatch_to: [infra]
groups:
  platform:
    members: [{agent: infra, use_for: runtime questions}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.yaml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_missing_file_is_an_empty_config(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.yaml") == Config()


def test_empty_file_and_empty_sections_are_empty(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "settings:\nagents:\ngroups:\n")) == Config()


def test_good_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.settings.default_timeout == 120
    assert config.agents["infra"].resources.memory_bytes == 1024**3
    assert config.agents["web"].dispatch_to == ["infra"]
    assert config.groups["platform"].members[0].agent == "infra"


def test_default_path_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AD_SANDBOX_CONFIG", str(write(tmp_path, GOOD)))
    assert set(load_config().agents) == {"infra", "web"}


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    text = "agents:\n  infra:\n    directory: /x\n    description: [unclosed\n"
    message = error_for(tmp_path, text)
    assert message.startswith("agents.yaml line 5")
    assert "malformed YAML" in message


def test_tab_indentation_is_malformed(tmp_path: Path) -> None:
    message = error_for(tmp_path, "agents:\n\tinfra: {}\n")
    assert "agents.yaml line 2" in message and "malformed YAML" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in error_for(tmp_path, "- one\n- two\n")


@pytest.mark.parametrize(
    ("text", "line", "path", "allowed"),
    [
        ("colour: red\n", 1, "colour", "settings, agents, groups"),
        ("settings:\n  max_depth: 2\n", 2, "settings.max_depth", "max_dispatch_depth"),
        ("settings:\n  budget:\n    weekly: 3\n", 3, "settings.budget.weekly", "per_root"),
        ("settings:\n  cache: {active: true}\n", 2, "settings.cache.active", "enabled, ttl"),
        (
            "settings:\n  model_api:\n    upstream: stub\n    key: x\n",
            4,
            "settings.model_api.key",
            "credential",
        ),
        ("agents:\n  a:\n    directory: /x\n    dir: /y\n", 4, "agents.a.dir", "directory"),
        (
            "agents:\n  a:\n    directory: /x\n    resources:\n      disk: 1g\n",
            5,
            "agents.a.resources.disk",
            "cpus, memory, pids, tmp_size",
        ),
        (
            "agents:\n  a:\n    directory: /x\n    network:\n      proxy: y\n",
            5,
            "agents.a.network.proxy",
            "egress",
        ),
        (
            "agents:\n  a:\n    directory: /x\n    secrets:\n      T: {env: A, default: b}\n",
            5,
            "agents.a.secrets.T.default",
            "env, file",
        ),
        ("groups:\n  g:\n    owner: me\n", 3, "groups.g.owner", "shared_context"),
        (
            "agents:\n  a: {directory: /x}\ngroups:\n  g:\n    members:\n      - agent: a\n"
            "        why: x\n",
            7,
            "groups.g.members.0.why",
            "agent, use_for",
        ),
    ],
)
def test_unknown_key_at_every_level(
    tmp_path: Path, text: str, line: int, path: str, allowed: str
) -> None:
    message = error_for(tmp_path, text)
    assert message.startswith(f"agents.yaml line {line}: {path} — unknown key; allowed keys:")
    assert allowed in message


def test_negative_timeout_names_line_key_and_value(tmp_path: Path) -> None:
    comments = "\n".join(["# comment"] * 10)
    text = comments + "\nagents:\n  infra:\n    directory: /x\n    timeout: -5\n"
    message = error_for(tmp_path, text)
    assert message.startswith("agents.yaml line 14: agents.infra.timeout: -5 — must be greater")


@pytest.mark.parametrize("key", ["per_run", "per_root", "daily"])
def test_negative_budget_is_named(tmp_path: Path, key: str) -> None:
    message = error_for(tmp_path, f"settings:\n  budget:\n    {key}: -1.5\n")
    assert message.startswith(f"agents.yaml line 3: settings.budget.{key}: -1.5 — must be")


def test_negative_agent_budget_is_named(tmp_path: Path) -> None:
    message = error_for(tmp_path, "agents:\n  a:\n    directory: /x\n    max_budget_usd: -2\n")
    assert message.startswith("agents.yaml line 4: agents.a.max_budget_usd: -2 — must be")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("settings:\n  max_concurrency: lots\n", "line 2: settings.max_concurrency: lots — must"),
        ("settings:\n  cache: {enabled: maybe}\n", "line 2: settings.cache.enabled: maybe — must"),
        ("agents:\n  a:\n    directory: /x\n    mount: rx\n", "line 4: agents.a.mount: rx — must"),
        ("agents:\n  a:\n    directory: /x\n    allowed_tools: Bash\n", "agents.a.allowed_tools"),
        ("agents:\n  a: [1]\n", "line 2: agents.a: [1] — must be a valid dictionary"),
    ],
)
def test_bad_type(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_for(tmp_path, text)


def test_missing_directory_key(tmp_path: Path) -> None:
    message = error_for(tmp_path, "agents:\n  a:\n    description: x\n")
    assert message.startswith("agents.yaml line 2: agents.a.directory — required key is missing")


def test_bad_agent_name_points_at_the_name(tmp_path: Path) -> None:
    text = "agents:\n  ok:\n    directory: /x\n  'no good':\n    directory: /y\n"
    message = error_for(tmp_path, text)
    assert message.startswith("agents.yaml line 4: agents.no good — name 'no good' must match")


def test_bad_group_name(tmp_path: Path) -> None:
    assert "groups._g — name '_g' must match" in error_for(tmp_path, "groups:\n  _g: {}\n")


@pytest.mark.parametrize("size", ["2 gigs", "1t", "1m"])
def test_bad_size(tmp_path: Path, size: str) -> None:
    text = f"agents:\n  a:\n    directory: /x\n    resources:\n      memory: {size}\n"
    message = error_for(tmp_path, text)
    assert message.startswith(f"agents.yaml line 5: agents.a.resources.memory: {size} — ")


def test_bad_upstream(tmp_path: Path) -> None:
    message = error_for(tmp_path, "settings:\n  model_api:\n    upstream: ftp://host\n")
    assert message.startswith("agents.yaml line 3: settings.model_api.upstream: ftp://host — ")
    assert "neither 'stub' nor an http(s) URL" in message


def test_dispatch_to_unknown_agent_points_at_the_item(tmp_path: Path) -> None:
    text = "agents:\n  a:\n    directory: /x\n    dispatch_to:\n      - a\n      - ghost\n"
    message = error_for(tmp_path, text)
    assert message.startswith("agents.yaml line 6: agents.a.dispatch_to — ")
    assert "unknown agent 'ghost'" in message


def test_group_member_unknown_agent_points_at_the_member(tmp_path: Path) -> None:
    text = "agents:\n  a: {directory: /x}\ngroups:\n  g:\n    members:\n      - agent: a\n" \
        "      - agent: nobody\n"  # fmt: skip
    message = error_for(tmp_path, text)
    assert message.startswith("agents.yaml line 7: groups.g.members — ")
    assert "unknown agent 'nobody'" in message


def test_duplicate_key(tmp_path: Path) -> None:
    text = "agents:\n  a: {directory: /x}\n  a: {directory: /y}\n"
    assert error_for(tmp_path, text).startswith("agents.yaml line 3: agents.a: duplicate key")


def test_more_errors_are_counted(tmp_path: Path) -> None:
    message = error_for(tmp_path, "settings:\n  max_concurrency: 0\n  default_timeout: 0\n")
    assert message.endswith("(and 1 more error)")


def test_error_carries_a_hint_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "colour: red\n"))
    assert str(tmp_path / "agents.yaml") in info.value.hint
    assert info.value.exit_code == 2


def test_validate_config_without_a_file_has_no_line() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"agents": {"a": {"directory": "/x", "timeout": -1}}})
    assert str(info.value) == "agents.a.timeout: -1 — must be greater than 0"


def test_round_trip_is_exact(tmp_path: Path) -> None:
    config = parse_config(GOOD, Path("agents.yaml"))
    path = tmp_path / "out" / "agents.yaml"
    save_config(config, path)
    assert load_config(path) == config
    # Only what was set is written: defaults stay out of the file.
    assert "permission_mode" not in path.read_text()


def test_round_trip_of_explicit_none_and_prices(tmp_path: Path) -> None:
    data = {
        "settings": {"model_api": {"credential": None, "prices": {"m": [1.0, 2.0]}}},
        "agents": {"a": {"directory": "/x", "secrets": {"F": {"file": "/s"}}}},
    }
    config = validate_config(data)
    save_config(config, tmp_path / "agents.yaml")
    again = load_config(tmp_path / "agents.yaml")
    assert again == config
    assert again.settings.model_api.credential is None


def test_save_is_0600_in_a_0700_dir_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "new" / "agents.yaml"
    save_config(validate_config({"agents": {"a": {"directory": "/x"}}}), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["agents.yaml", "agents.yaml.lock"]


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    os.chmod(path, 0o644)
    inode = path.stat().st_ino
    save_config(Config(), path)
    assert path.stat().st_ino != inode  # a new file was renamed over the old one
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path) == Config()


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    names = [f"agent{i}" for i in range(24)]
    errors: list[BaseException] = []

    def add(name: str) -> None:
        def apply(config: Config) -> Config:
            agents = {**config.agents, name: Agent(directory=f"/srv/{name}")}
            return config.model_copy(update={"agents": agents})

        try:
            update_config(apply, path)
        except BaseException as exc:  # surfaced below; a thread cannot raise into the test
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(load_config(path).agents) == sorted(names)


def test_update_config_does_not_write_when_fn_raises(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    before = path.read_text()

    def boom(config: Config) -> Config:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        update_config(boom, path)
    assert path.read_text() == before


def test_dump_is_plain_yaml() -> None:
    text = dump_config(validate_config({"agents": {"a": {"directory": "/x"}}}))
    assert text == "agents:\n  a:\n    directory: /x\n"


class TestSnapshot:
    def edit(self, path: Path, text: str) -> None:
        # Bump mtime explicitly: two writes can land in the same timestamp tick.
        before = path.stat().st_mtime_ns if path.exists() else 0
        path.write_text(text)
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

    def test_reloads_on_change(self, tmp_path: Path) -> None:
        path = write(tmp_path, GOOD)
        snap = ConfigSnapshot(path)
        assert set(snap.get().agents) == {"infra", "web"}
        self.edit(path, "agents:\n  solo: {directory: /x}\n")
        assert set(snap.get().agents) == {"solo"}
        assert snap.warning is None

    def test_same_object_while_unchanged(self, tmp_path: Path) -> None:
        snap = ConfigSnapshot(write(tmp_path, GOOD))
        assert snap.get() is snap.get()

    def test_broken_edit_keeps_last_good_and_fix_reloads(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        path = write(tmp_path, GOOD)
        snap = ConfigSnapshot(path)
        good = snap.get()
        self.edit(path, GOOD.replace("timeout: 600", "timeout: -1"))
        assert snap.get() is good
        assert snap.warning is not None
        assert "agents.infra.timeout: -1" in snap.warning
        assert "kept the last good config" in caplog.text
        self.edit(path, GOOD.replace("timeout: 600", "timeout: 900"))
        assert snap.get().agents["infra"].timeout == 900
        assert snap.warning is None

    def test_first_load_failing_raises(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            ConfigSnapshot(write(tmp_path, "agents: [\n")).get()

    def test_missing_then_created(self, tmp_path: Path) -> None:
        path = tmp_path / "agents.yaml"
        snap = ConfigSnapshot(path)
        assert snap.get() == Config()
        self.edit(path, GOOD)
        assert "infra" in snap.get().agents
