"""Ask a running `thickets serve` with the official openai client: chat and completion, streamed and not,
and read the vote that chose each answer.

    thickets demo --run-dir runs/demo                       # or any finished search
    thickets serve --run-dir runs/demo --top-k 5 --port 8000 &
    python examples/openai_client.py --port 8000
"""

from __future__ import annotations

import argparse

from openai import OpenAI


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--question", default="What is 23 * 41? Give the answer as a number.")
    a = p.parse_args()
    client = OpenAI(base_url=f"http://127.0.0.1:{a.port}/v1", api_key="unused")
    model = client.models.list().data[0].id
    print(f"model: {model}")

    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": a.question}])
    vote = reply.model_extra["thickets"]
    print(f"chat: {reply.choices[0].message.content!r}")
    print(
        f"  votes {vote['votes']}, margin {vote['margin']}, {vote['experts_asked']} of {vote['k']} experts asked, "
        f"text of expert {vote['returned_expert']}"
    )

    print("chat, streamed: ", end="", flush=True)
    last = None
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": a.question}], stream=True
    ):
        print(chunk.choices[0].delta.content or "", end="", flush=True)
        last = chunk
    print(f"\n  votes {last.model_extra['thickets']['votes'] if last else '-'}")

    done = client.completions.create(model=model, prompt="The product of 12 and 12 is", max_tokens=8)
    print(f"completion: {done.choices[0].text!r} (votes {done.model_extra['thickets']['votes']})")


if __name__ == "__main__":
    main()
