from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("gmm-dask")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0+unknown"
