"""The S3 filesystem fsspec makes for ``s3://``: s3fs with the project's retries, imported
only when used (s3fs and aiobotocore cost every run's start-up about 0.3 s otherwise)."""

import subprocess
import sys

from tasks.data import uris

CHECK = """
import sys
import fsspec
from tasks.data import uris
assert "s3fs" not in sys.modules, "importing tasks.data.uris imported s3fs"
fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url="http://127.0.0.1:9")
print(type(fs).__module__, type(fs).__name__, fs.retries, "s3fs" in sys.modules)
"""


def test_s3_paths_open_our_s3fs_subclass_and_s3fs_loads_only_then():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["tasks.data.s3", "S3FileSystem", str(uris.S3_RETRIES), "True"]


def test_the_subclass_is_still_s3fs():
    import s3fs

    from tasks.data.s3 import S3FileSystem

    assert issubclass(S3FileSystem, s3fs.S3FileSystem)
    assert S3FileSystem.retries == uris.S3_RETRIES != s3fs.S3FileSystem.retries
