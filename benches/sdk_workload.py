"""Run a horde-batch workload through the official Python SDK (horde_sdk).

Used by benches/run.sh: it reads the jobs of a manifest from
`horde-batch plan MANIFEST --list --json` (one JSON object per line on stdin)
and generates the same images, request for request (a job's images in
requests of at most 20, as horde-batch batches them), against the Horde at
AI_HORDE_URL.

It is written the way horde_sdk's own example for several images at once
(examples/ai_horde_client/image/async_simple_client_example.py) does it:
one AIHordeAPIAsyncSimpleClient, every `image_generate_request` gathered
with asyncio.gather, then every image fetched with
`download_image_from_generation`, gathered too, and saved as .webp plus a
.json of its generation.

The one addition: the SDK gives up on a 429 from the rate limiter (an
AIHordeRequestError "2 per 1 second"), so the whole batch would fail. Each
request is retried after 1 s (the Retry-After the Horde sends on submits)
until it is accepted; every such 429 is counted and reported.

`--delay-step S` passes `delay=i*S` to the i-th request: the spacing knob the
SDK's docstring of `image_generate_request` points to ("space concurrent
requests apart slightly"). 0, the default, is the example as written.

The SDK's logging is cut to errors (it logs every poll otherwise), which only
saves it CPU time.

Usage: sdk_workload.py OUT_DIR [--delay-step S] < jobs.jsonl, with
AI_HORDE_URL set. Prints one JSON object on stdout: requests, images,
rate-limit retries, seconds.
"""

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

import aiohttp
from horde_sdk import ANON_API_KEY
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIAsyncClientSession, AIHordeAPIAsyncSimpleClient
from horde_sdk.ai_horde_api.apimodels import ImageGenerateAsyncRequest, ImageGenerationInputPayload
from horde_sdk.ai_horde_api.exceptions import AIHordeRequestError
from loguru import logger

MAX_N = 20
RATE_LIMIT_MESSAGE = re.compile(r"^\d+ per 1 (second|minute)$")

rate_limited = 0


def requests_of(jobs: list[dict]) -> list[ImageGenerateAsyncRequest]:
    """One SDK request per horde-batch request: each job's images in chunks of at most MAX_N."""
    requests = []
    for job in jobs:
        prompt = job["prompt"] if job["negative"] is None else f"{job['prompt']} ### {job['negative']}"
        left = job["images"]
        while left > 0:
            n = min(left, MAX_N)
            left -= n
            requests.append(
                ImageGenerateAsyncRequest(
                    apikey=ANON_API_KEY,
                    prompt=prompt,
                    models=job["models"],
                    params=ImageGenerationInputPayload(**job["params"], n=n),
                )
            )
    return requests


async def generate(simple_client: AIHordeAPIAsyncSimpleClient, request: ImageGenerateAsyncRequest, delay: float):
    global rate_limited
    while True:
        try:
            return await simple_client.image_generate_request(request, delay=delay)
        except AIHordeRequestError as error:
            if not RATE_LIMIT_MESSAGE.match(str(error)):
                raise
            rate_limited += 1
            delay = 0.0
            await asyncio.sleep(1)


async def run(requests: list[ImageGenerateAsyncRequest], out: Path, delay_step: float) -> int:
    aiohttp_session = aiohttp.ClientSession()
    horde_client_session = AIHordeAPIAsyncClientSession(aiohttp_session)
    async with aiohttp_session, horde_client_session:
        simple_client = AIHordeAPIAsyncSimpleClient(
            aiohttp_session=aiohttp_session,
            horde_client_session=horde_client_session,
        )
        responses = await asyncio.gather(
            *(generate(simple_client, request, i * delay_step) for i, request in enumerate(requests))
        )

        generations = [generation for response, _job_id in responses for generation in response.generations]
        downloads = [
            asyncio.create_task(simple_client.download_image_from_generation(generation))
            for generation in generations
        ]
        downloaded = await asyncio.gather(*downloads)

        out.mkdir(parents=True, exist_ok=True)
        for (image, generation_id), generation in zip(downloaded, generations):
            image.save(out / f"{generation_id}.webp")
            (out / f"{generation_id}.json").write_text(generation.model_dump_json(indent=4))
        return len(downloaded)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to save the images")
    parser.add_argument(
        "--delay-step",
        type=float,
        default=0.0,
        help="pass delay=i*STEP to the i-th image_generate_request (the SDK's own spacing knob); 0 as in its example",
    )
    args = parser.parse_args()
    # The SDK logs every 429 and every poll at INFO and above; keep errors only.
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    jobs = [json.loads(line) for line in sys.stdin if line.strip()]
    requests = requests_of(jobs)
    start = time.monotonic()
    images = asyncio.run(run(requests, args.out, args.delay_step))
    seconds = time.monotonic() - start
    print(
        json.dumps(
            {
                "requests": len(requests),
                "delay_step": args.delay_step,
                "images": images,
                "rate_limited_retries": rate_limited,
                "seconds": round(seconds, 3),
            }
        )
    )
    return 0 if images == sum(job["images"] for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(main())
