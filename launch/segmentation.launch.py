"""Start seg_ros' segmentation node (and optionally RViz on its overlay).

    ros2 launch seg_ros segmentation.launch.py model:=deeplab image:=/camera/image_raw rviz:=true
    ros2 launch seg_ros segmentation.launch.py cameras:=front,rear,left,right  # one model, batched

Thin on purpose: the parameter list comes from seg_ros.node_parameters.launch_parameters,
which validates the arguments and is tested without ROS's launch packages.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from seg_ros.node_parameters import (
    NODE_NAME,
    default_params_file,
    launch_parameters,
    parse_launch_bool,
    rviz_remappings,
)
from seg_ros.paths import config_dir

ARGUMENTS = {
    "model": ("", "segnet | deeplab | refinenet | fcn; empty = the params file's choice"),
    "backend": ("", "auto | tensorrt | onnxruntime | torch; empty = the params file's choice"),
    "precision": ("", "fp32 | fp16 | int8; empty = the params file's choice"),
    "use_crf": ("", "true | false: dense-CRF refinement; empty = the params file's choice"),
    "image": ("image", "input image topic (image_transport compressed adds /compressed)"),
    "cameras": (
        "",
        "comma-separated camera names, each read from <name>/image (relative to the namespace) "
        "and published on ~/<name>/...; empty = the single image input",
    ),
    "lifecycle": ("false", "true: the managed node (configure and activate it to start)"),
    "namespace": ("", "namespace of the node"),
    "params_file": (str(default_params_file()), "the node's parameter YAML"),
    "rviz": ("false", "true: open RViz showing the overlay and colour mask"),
}


def _actions(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    actions = [
        Node(
            package="seg_ros",
            executable=(
                "segmentation_lifecycle_node"
                if parse_launch_bool("lifecycle", arg["lifecycle"])
                else "segmentation_node"
            ),
            name=NODE_NAME,
            namespace=arg["namespace"],
            parameters=launch_parameters(
                model=arg["model"],
                backend=arg["backend"],
                precision=arg["precision"],
                use_crf=arg["use_crf"],
                cameras=arg["cameras"],
                params_file=arg["params_file"],
            ),
            remappings=[("image", arg["image"])],
            output="screen",
        )
    ]
    if parse_launch_bool("rviz", arg["rviz"]):
        actions.append(
            Node(
                package="rviz2",
                executable="rviz2",
                arguments=["-d", str(config_dir() / "segmentation.rviz")],
                remappings=rviz_remappings(arg["namespace"]),
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()
        ]
        + [OpaqueFunction(function=_actions)]
    )
