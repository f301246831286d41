"""tests/child_env.py: what passes from the developer's environment to the processes
tests start."""

from __future__ import annotations

from child_env import child_env


def test_only_the_listed_variables_pass_and_the_test_adds_its_own():
    base = {
        "PATH": "/usr/bin", "HOME": "/home/dev", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp/x",
        "VIRTUAL_ENV": "/v", "PYTHONPATH": "/src", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "2",
        "LLM_API_KEY": "k", "MSTING_HOME": "/h", "MSTING_LLM_PORT": "1", "MSTING_WORKER_FAILPOINTS": "crash_on_prompt=a",
        "OPENAI_API_KEY": "x", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "HTTP_PROXY": "http://p",
        "PYTHONWARNINGS": "error", "PYTHONASYNCIODEBUG": "1", "COLUMNS": "40", "FORCE_COLOR": "1", "LD_PRELOAD": "x.so",
    }
    env = child_env(base, MSTING_HOME="/test/home")
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/dev", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp/x",
        "VIRTUAL_ENV": "/v", "PYTHONPATH": "/src", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "2",
        "MSTING_HOME": "/test/home",
    }
