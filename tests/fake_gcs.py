"""A stand-in for Google Cloud Storage on the local disk, so that gs:// workdirs run offline.

gs://bucket/key is the file ROOT/bucket/key. Three things are replaced, each where the real
client would go to the network; everything else (etils.epath, Orbax's checkpoint logic for
gs://, dlm's own code) runs as it would against a bucket:
- fsspec's gs / gcs protocol, which etils.epath uses for gs:// (config, tokenizer, shards,
  metrics, Orbax's metadata and commit markers): a directory-prefixed local filesystem that
  lists and globs like gcsfs ('bucket/key', no protocol) and, like an object store, writes an
  object without its parent directories existing;
- the TensorStore kvstore Orbax opens for gs:// (the checkpoint arrays): TensorStore's file
  driver under ROOT instead of its GCS driver;
- Orbax's question whether the bucket has a hierarchical namespace (a GCS API call): no.
"""

from etils.epath import backend
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry  # what fsspec.register_implementation writes to


def install(root, monkeypatch) -> None:
  root = str(root)

  class LocalBucket(DirFileSystem):
    protocol = ('gs', 'gcs')
    cachable = False

    def __init__(self, *args, **kwargs):
      super().__init__(path=root, fs=LocalFileSystem(auto_mkdir=True))

  from orbax.checkpoint._src.path import gcs_utils
  for name in ('gs', 'gcs'):
    monkeypatch.setitem(_registry, name, LocalBucket)
  # epath caches one filesystem per scheme: drop it now, and again when the test is over
  backend.fsspec_backend._get_filesystem.cache_clear()
  monkeypatch.setattr(backend.fsspec_backend, '_get_filesystem',
                      backend.fsspec_backend._get_filesystem)
  monkeypatch.setattr(gcs_utils, 'get_kvstore_for_gcs', lambda path: {
      'driver': 'file', 'path': f'{root}/{"/".join(gcs_utils.parse_gcs_path(path, False))}'})
  monkeypatch.setattr(gcs_utils, 'is_hierarchical_namespace_enabled', lambda path: False)
