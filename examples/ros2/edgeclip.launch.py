"""Launch the edgeclip node: ros2 launch examples/ros2/edgeclip.launch.py image:=/camera/image_raw

Arguments: image (the camera topic, remapped onto the node's `image`), params (a parameters file, default
params.yaml here) and python (the interpreter that imports both rclpy and edgeclip; default: the one running
the launch).
"""

import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

HERE = Path(__file__).resolve().parent


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument("image", default_value="/camera/image_raw", description="the camera's image topic"),
            DeclareLaunchArgument("params", default_value=str(HERE / "params.yaml"), description="parameters file"),
            DeclareLaunchArgument("python", default_value=sys.executable, description="Python with rclpy and edgeclip"),
            ExecuteProcess(
                cmd=[
                    LaunchConfiguration("python"),
                    str(HERE / "edgeclip_node.py"),
                    "--ros-args",
                    "--params-file",
                    LaunchConfiguration("params"),
                    "--remap",
                    ["image:=", LaunchConfiguration("image")],
                ],
                name="edgeclip",
                output="screen",
            ),
        ]
    )
