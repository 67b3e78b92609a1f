"""`thunder-sched` flags become a typed config; bad values fail with a clear message."""

from __future__ import annotations

import pytest

from thunder_sched.cli import build_parser, config_from_args, main


def test_flags_build_the_config() -> None:
    args = build_parser().parse_args(
        [
            "--backend",
            "http://127.0.0.1:8000/",
            "--backend",
            "http://127.0.0.1:8001",
            "--lambda-max",
            "0.9",
            "--tau",
            "12",
            "--no-time-decay",
            "--interval",
            "0.5",
            "--env-manager-url",
            "http://127.0.0.1:9/x",
            "--min-running",
            "3",
            "--model-alias",
            "claude-sonnet-4-5=tiny",
            "--model-alias",
            "*=tiny",
            "--forward-auth",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.backends == ("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    assert cfg.policy.lambda_max == 0.9 and cfg.policy.tau_s == 12 and cfg.policy.time_decay is False
    assert cfg.interval_s == 0.5 and cfg.env_manager_url == "http://127.0.0.1:9/x"
    assert cfg.policy.min_running == 3
    assert cfg.model_aliases == {"claude-sonnet-4-5": "tiny", "*": "tiny"} and cfg.forward_auth is True
    assert (args.host, args.port) == ("127.0.0.1", 8300)


def test_defaults_have_time_decay_on_and_a_one_second_check() -> None:
    cfg = config_from_args(build_parser().parse_args(["--backend", "http://127.0.0.1:8000"]))
    assert cfg.policy.time_decay and cfg.interval_s == 1.0 and cfg.policy.lambda_max == 1.0
    assert cfg.model_aliases == {} and cfg.forward_auth is False  # a client's token stays here
    assert cfg.policy.min_running == 1  # work-conserving: an idle engine takes the next ready program


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "localhost:8000"], "must start with http"),
        (["--backend", "http://a", "--backend", "http://a/"], "duplicate backend"),
        (["--backend", "http://a", "--lambda-max", "0.5", "--lambda-min", "0.8"], "lambda_min"),
        (["--backend", "http://a", "--tau", "0"], "tau_s"),
        (["--backend", "http://a", "--model-alias", "claude"], "NAME=SERVED"),
    ],
)
def test_bad_flags_exit_with_the_reason(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert message in str(exc.value)
