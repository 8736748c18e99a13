"""The configuration tree composes and accepts hydra-style overrides."""

from gato_ros.config import load_config
from gato_ros.paths import calibration_dir, share_dir


def test_config_composes_with_overrides() -> None:
    cfg = load_config(["control.rate_hz=10", "seed=7"])
    assert cfg.control.rate_hz == 10
    assert cfg.seed == 7
    assert len(cfg.robot.joint_names) == 7
    assert len(cfg.control.action_low) == len(cfg.control.action_high) == 5


def test_share_dir_holds_data_trees() -> None:
    assert (share_dir() / "package.xml").is_file()
    assert (calibration_dir() / "rgb_stacking_cell.yaml").is_file()
