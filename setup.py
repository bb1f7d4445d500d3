"""signflow: continuous training on TFX for base64 signature images, and its serving side.

`pip install .` (or `.[serving]`) installs what the model server needs and nothing of TFX:
serving/ never imports pipeline/ or components/. `pip install .[pipeline]` adds the
training side. Exact versions for both are pinned in requirements.lock.
"""
from setuptools import find_packages, setup

SERVING = [
    "tensorflow==2.16.2",
    "tensorflow-serving-api==2.16.1",
    "numpy",
    "starlette",
    "uvicorn[standard]",
    "prometheus-client",
    "pillow",
    "requests",
]
PIPELINE = [
    "tfx==1.16.0",
    "tf-keras==2.16.0",
    "apache-beam[gcp]==2.59.0",
    "ml-metadata==1.16.0",
    "tensorflow-data-validation==1.16.1",
    "tensorflow-model-analysis>=0.47,<0.48",
    "tfx-bsl==1.16.1",
    "kfp-pipeline-spec==0.2.2",
    "matplotlib",
]

setup(
    name="signflow",
    version="0.1.0",
    description="A TFX continuous-training pipeline for base64 signature images, with a TF Serving-compatible server",
    python_requires=">=3.10,<3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*", "serving", "serving.*"]),
    # serving/ui/ is the web page's files (plain HTML, CSS, JavaScript), served from the installed package.
    package_data={"components": ["schema/*.pbtxt"], "serving": ["ui/*.html", "ui/*.js", "ui/*.css"]},
    install_requires=SERVING,
    extras_require={"serving": [], "pipeline": PIPELINE},
    entry_points={
        "console_scripts": [
            # Needs the pipeline extra.
            "signflow=pipeline.cli:main",
            # The serving side alone, for machines that deploy without TFX.
            "signflow-serve=serving.__main__:main",
        ]
    },
)
