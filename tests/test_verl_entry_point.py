"""The README's command for verl's own entry point works as written from the repository root:
hydra composes our config (trainer mode, reward guard, exgrpo section) through verl's
`main_ppo` (`--cfg job`: compose and print, no run). A relative --config-path would be read
against verl's own folder and fail."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_verl_command() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"`(python -m verl\.trainer\.main_ppo [^`]*)`", readme)
    assert len(commands) == 1, commands
    assert "skips the plugin's up-front checks" in " ".join(readme.split())
    return commands[0]


def test_the_readmes_verl_command_composes_our_config_from_the_repo_root():
    words = shlex.split(readme_verl_command().replace("$PWD", str(REPO_ROOT)))
    assert words[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    result = subprocess.run([sys.executable, *words[1:], "--cfg", "job"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    assert config["trainer"]["v1"]["trainer_mode"] == "exgrpo"
    assert config["reward"]["reward_manager"]["name"] == "GuardedRewardManager"
    assert config["exgrpo"]["replay_ratio"] == 0.5 and config["algorithm"]["adv_estimator"] == "exgrpo"
