"""Query a Triton Inference Server that serves a repository written by `edgeclip triton`.

    edgeclip triton --out models                # the built-in model; or: edgeclip triton export/<name> --out models
    docker run --rm -p8001:8001 -v $PWD/models:/models nvcr.io/nvidia/tritonserver:<tag>-py3 \\
        tritonserver --model-repository=/models  # its Python environment needs: pip install edgeclip
    python examples/triton_client.py --url localhost:8001 --model tiny "a red star" --image photo.jpg

Texts go to the `<model>_text_ensemble` (strings in, tokenized on the server); images are preprocessed here with
edgeclip's own preprocessing (the bundle's contract) and sent to `<model>_image`. Needs `pip install
'edgeclip[cpu,triton]'`. Prints the cosine similarity of every image to every text.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import tritonclient.grpc as grpcclient

    import edgeclip

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--image", action="append", default=[], help="An image file (repeat for more).")
    parser.add_argument("--url", default="localhost:8001", help="Triton's gRPC address.")
    parser.add_argument("--model", default="tiny", help="The model-name prefix (the bundle's name).")
    parser.add_argument("--bundle", default=None, help="The bundle, for its preprocessing (default: built-in).")
    args = parser.parse_args()
    client = grpcclient.InferenceServerClient(url=args.url)

    text = grpcclient.InferInput("TEXT", [len(args.texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in args.texts], dtype=object))
    result = client.infer(f"{args.model}_text_ensemble", [text])
    text_embeds = result.as_numpy("text_embeds")  # (T, D), L2-normalized
    print("text embeddings:", text_embeds.shape)

    if args.image:
        model = edgeclip.load(args.bundle)  # used for its preprocessing only: the graphs run on the server
        pixels = model.preprocessor([str(p) for p in args.image])  # (N, 3, S, S) float32
        image = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        image.set_data_from_numpy(pixels)
        image_embeds = client.infer(f"{args.model}_image", [image]).as_numpy("image_embeds")
        for path, row in zip(args.image, image_embeds @ text_embeds.T, strict=True):
            print(path, " ".join(f"{t!r}: {s:.3f}" for t, s in zip(args.texts, row, strict=True)))


if __name__ == "__main__":
    main()
