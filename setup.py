"""signflow: continuous training on TFX for base64 signature images, and its serving side."""
from setuptools import find_packages, setup

setup(
    name="signflow",
    version="0.1.0",
    description="A TFX continuous-training pipeline for base64 signature images, with a TF Serving-compatible server",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*", "serving", "serving.*"]),
    package_data={"components": ["schema/*.pbtxt"]},
    # Versions are pinned in requirements.lock; these are the direct needs.
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "apache-beam[gcp]==2.59.0",
        "tensorflow-serving-api==2.16.1",
        "starlette",
        "uvicorn[standard]",
        "prometheus-client",
        "pillow",
        "requests",
        "matplotlib",
    ],
    entry_points={
        "console_scripts": [
            "signflow=pipeline.cli:main",
            # The serving side alone, for machines that deploy without TFX.
            "signflow-serve=serving.__main__:main",
        ]
    },
)
