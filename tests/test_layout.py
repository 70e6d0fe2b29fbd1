"""The package layout DESIGN.md fixes."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_dir_is_not_a_package_so_stdlib_platform_still_imports():
    assert not (ROOT / "platform" / "__init__.py").exists()
    import platform

    assert callable(platform.system)  # the standard library's module, not our folder


def test_alignray_imports_from_platform_folder():
    import alignray

    assert Path(alignray.__file__).resolve().parent == ROOT / "platform" / "alignray"
