"""Drive the simulated Horde with the official Python SDK (horde_sdk).

Run by scripts/sdk_fidelity.sh with AI_HORDE_URL pointing at a running
`horde-batch sim`. Exits 0 when the SDK generated images end to end and
every image is a WebP file, 1 otherwise. If the SDK cannot parse what the
simulator answers, that is a fidelity bug in the simulator.
"""

import io
import os
import sys

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPISimpleClient, download_image_bytes
from horde_sdk.ai_horde_api.apimodels import (
    ImageGenerateAsyncRequest,
    ImageGenerationInputPayload,
)
from horde_sdk.generic_api.consts import ANON_API_KEY


def is_webp(data: bytes) -> bool:
    return len(data) > 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def generate(client: AIHordeAPISimpleClient, *, r2: bool, n: int) -> list[bytes]:
    request = ImageGenerateAsyncRequest(
        apikey=ANON_API_KEY,
        prompt="a lighthouse at dusk ### blurry",
        models=["stable_diffusion"],
        r2=r2,
        params=ImageGenerationInputPayload(width=512, height=512, steps=20, n=n, sampler_name="k_euler_a"),
    )
    status, job_id = client.image_generate_request(request, timeout=120)
    print(f"request {job_id}: {len(status.generations)} generation(s), done={status.done}")
    if len(status.generations) != n:
        raise RuntimeError(f"expected {n} generations, got {len(status.generations)}")
    images = []
    for generation in status.generations:
        if r2:
            data = download_image_bytes(generation.img).getvalue()
        else:
            image = client.download_image_from_generation(generation)
            if image.format != "WEBP":
                raise RuntimeError(f"PIL read {image.format}, not WEBP")
            buffer = io.BytesIO()
            image.save(buffer, format="WEBP")
            data = buffer.getvalue()
        if not is_webp(data):
            raise RuntimeError(f"generation {generation.id} is not a WebP file")
        images.append(data)
    return images


def main() -> int:
    if not os.environ.get("AI_HORDE_URL"):
        print("AI_HORDE_URL is not set", file=sys.stderr)
        return 1
    client = AIHordeAPISimpleClient()
    heartbeat = client.heartbeat_request()
    print(f"heartbeat: {heartbeat.message} {heartbeat.version}")

    dry_run = client.image_generate_request_dry_run(
        ImageGenerateAsyncRequest(
            apikey=ANON_API_KEY,
            prompt="a lighthouse at dusk",
            models=["stable_diffusion"],
            dry_run=True,
            params=ImageGenerationInputPayload(width=512, height=512, steps=30, n=3),
        )
    )
    print(f"dry run: {dry_run.kudos} kudos")

    generate(client, r2=True, n=2)
    generate(client, r2=False, n=1)
    print("sdk fidelity: OK")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # report any SDK failure as a failed check
        print(f"sdk fidelity: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
