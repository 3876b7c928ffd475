"""exgrpo-verl: ExGRPO (Learning to Reason from Experience) as a plugin for verl 0.9.1."""

from setuptools import find_packages, setup

# The V1 trainer imports TransferQueue and friends, which only verl's `verl-core` extra brings;
# that extra also pins a CUDA torch, so CPU machines list the pieces themselves.
V1_TRAINER_IMPORTS = [
    "TransferQueue>=0.1.10",
    "pyzmq",
    "msgspec",
    "fastapi",
    "uvicorn",
    "cachetools",
    "mathruler",
]

setup(
    name="exgrpo-verl",
    version="0.1.0",
    description="ExGRPO (Learning to Reason from Experience) as a plugin for verl 0.9.1",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # trainer_configs/ (hydra yaml) ships inside the package as exgrpo_verl.trainer_configs.
    packages=find_packages(include=["exgrpo_verl", "exgrpo_verl.*"]) + ["exgrpo_verl.trainer_configs"],
    package_dir={"exgrpo_verl.trainer_configs": "trainer_configs"},
    package_data={
        "exgrpo_verl.trainer_configs": ["*.yaml", "preset/*.yaml"],
        # The release's evaluation files (under 1 MB): tests and prepare_data.py --dataset valid read them.
        "exgrpo_verl.data": ["eval/*.parquet", "eval/*.json", "eval/README.md"],
        # The miniature study's warm starts (~2 MB each), the same bytes on every machine (tasks/warm_start.py).
        "exgrpo_verl.tasks": ["shipped_warm_starts/*.safetensors", "shipped_warm_starts/manifest.json"],
    },
    install_requires=[
        "verl==0.9.1",
        "numpy",
        "pyarrow",
        "pandas",
        "safetensors",
    ],
    extras_require={
        # What a GPU user installs beside verl: its vLLM stack (torch 2.11, CUDA 13), grading, logging.
        # Every package here has a wheel for Linux x86_64, Python 3.10-3.12. flash-attn has none and
        # imports torch while it builds, which pip's isolated build cannot: it is a second step
        # (`pip install flash-attn==2.8.3 --no-build-isolation`, docs/reproduce.md), SDPA without it.
        "gpu": ["verl[vllm]==0.9.1", "math-verify>=0.9.0", "wandb", "matplotlib"],
        # CPU development and CI: the V1 trainer's imports without CUDA wheels, grading, plots, tests.
        "cpu": V1_TRAINER_IMPORTS + ["math-verify>=0.9.0", "matplotlib"],
        "test": V1_TRAINER_IMPORTS + ["math-verify>=0.9.0", "matplotlib", "pytest>=8", "pytest-timeout", "hypothesis"],
    },
    entry_points={"verl.plugins": ["exgrpo = exgrpo_verl.plugin"]},
)
