"""The ceiling: a plain uvicorn + FastAPI hello-world, no Ray, measured beside Agora.

``python -m loadtests.mix`` starts it on a free loopback port with
``python -m uvicorn loadtests.hello:app``; its throughput is the denominator of
the mix's "fraction of the hello-world ceiling".
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}
