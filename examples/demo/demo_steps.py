"""Python steps of the demo workspace (spec §2.7): `stamp` runs after the built-in counter."""


async def stamp(ctx):
    ctx.emit_progress("stamping")
    n = ctx.input["counted"]
    return {"counted": n, "text": f"COUNTED {n}!" if ctx.payload.get("loud") else f"counted {n}"}
