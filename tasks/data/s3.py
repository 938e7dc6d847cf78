"""The S3 filesystem every ``s3://`` path opens: s3fs with this project's retries.

s3fs keeps ``retries`` as a class attribute, not an argument, so a subclass carries it.
:func:`tasks.data.uris.configure_s3fs` registers this class with fsspec by name: s3fs and
aiobotocore (about 0.3 s of imports) load only when a run opens an ``s3://`` path.
"""

from __future__ import annotations

import s3fs

from tasks.data.uris import S3_RETRIES


class S3FileSystem(s3fs.S3FileSystem):
    retries = S3_RETRIES
