"""What pyproject.toml cannot say on its own: the top-level `search_spaces/` folder (where users
edit the spaces) ships inside the wheel as package data, `ray_xray/search_spaces/`, read by
`ray_xray/spaces/files.py`. A setuptools package-dir mapping; `find_packages` alone would not
list a package that lives outside `ray_xray/`. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["ray_xray*"]), "ray_xray.search_spaces"],
    package_dir={"ray_xray.search_spaces": "search_spaces"},
    package_data={"ray_xray.search_spaces": ["*.yaml", "*.md"]},
)
