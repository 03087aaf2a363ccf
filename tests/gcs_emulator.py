"""A local stand-in for Cloud Storage: gcp-storage-emulator's server (Cloud Storage's JSON API, in memory) with the
part of the API that tensorstore, Orbax's array writer, relies on and the emulator leaves out. A media download
names the object's generation (`x-goog-generation`), and a download conditional on `ifGenerationNotMatch` /
`ifGenerationMatch` answers 304 / 412, as the real store does. Without the header tensorstore reads a generation
it cannot use, and its next conditional write of an OCDBT manifest fails ("Malformed StorageGeneration").

    python tests/gcs_emulator.py PORT BUCKET
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return _download(request, response, storage, *args, **kwargs)  # its 404
    generation, query = str(obj["generation"]), request.query
    if query.get("ifGenerationNotMatch", [None])[0] == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    if query.get("ifGenerationMatch", [generation])[0] != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj["metageneration"])
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # `objects.get` (`alt=media`, tensorstore's reads) calls it by this name

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server.Server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
