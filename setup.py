"""ament_python build for seg_ros: works with colcon on a robot and with pip in .venv/."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml"),
        ),
        (f"share/{PACKAGE}/config/classes", glob("config/classes/*.yaml")),
        (
            f"share/{PACKAGE}/models",
            glob("models/*.safetensors") + glob("models/*.md") + glob("models/*.json"),
        ),
        (f"share/{PACKAGE}/samples/camvid", glob("samples/camvid/*")),
    ],
    install_requires=["setuptools", "numpy", "pyyaml"],
    zip_safe=False,
    maintainer="seg_ros maintainers",
    maintainer_email="seg-ros@example.org",
    description="Semantic segmentation node (SegNet, DeepLab, RefineNet, FCN) with TensorRT, "
    "ONNX Runtime and PyTorch backends.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segmentation_node = seg_ros.node:main",
            "segmentation_lifecycle_node = seg_ros.lifecycle_node:main",
            "evaluator_node = seg_ros.evaluator_node:main",
            "seg_ros = seg_ros.cli:main",
        ],
    },
)
