"""Command lines of `queuechat.launcher`: a wrapper prefix, Redis' address and password."""

from __future__ import annotations

from pathlib import Path

from queuechat.launcher import LOCAL, Process, redis_command


def test_a_prefix_wraps_the_program_and_keeps_its_name(tmp_path: Path) -> None:
    proc = Process(["sh", "-c", "echo \"$QC_WRAPPED\""], tmp_path / "log", prefix=["env", "QC_WRAPPED=yes"])
    try:
        assert proc.popen.wait(10) == 0
    finally:
        proc.stop()
    assert proc.name == "sh" and proc.argv[:3] == ["env", "QC_WRAPPED=yes", "sh"]
    assert proc.log_tail() == "yes\n"


def test_redis_command_binds_where_told_and_asks_for_a_password() -> None:
    plain = redis_command(6379)
    assert plain[plain.index("--bind") + 1] == LOCAL and "--requirepass" not in plain
    locked = redis_command(6379, bind="10.1.2.3", password="secret")
    assert locked[locked.index("--bind") + 1] == "10.1.2.3"
    assert locked[locked.index("--requirepass") + 1] == "secret"
