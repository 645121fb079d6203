"""A small MCP server for the gateway's tests, on the Python `mcp` SDK's high-level server
(`MCPServer`, FastMCP before mcp 2.0) over streamable HTTP at http://127.0.0.1:<port>/mcp.

    python tests/mcp/server.py --port 8931

Tools: `add` answers, `slow` sleeps past any short timeout, `explode` raises (the result has
`isError`), `header` answers a request header (to check the configured headers arrive), and
`enable_multiply` adds a `multiply` tool and tells the client its tool list changed.
"""

import argparse
import asyncio

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("gateway-test-tools")


@server.tool(title="Add two numbers", description="Adds two integers.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Sleeps for the given number of seconds, then answers.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finally awake"


@server.tool(description="Always fails.")
def explode() -> str:
    # A `ToolError`'s message reaches the client; any other exception's is masked by the SDK.
    raise ToolError("the tool exploded on purpose")


@server.tool(description="The value of an HTTP request header, or `(none)`.")
def header(name: str, ctx: Context) -> str:
    request = getattr(ctx.request_context, "request", None)
    headers = getattr(request, "headers", None)
    if headers is None:
        return "(none)"
    return headers.get(name, "(none)")


def multiply(a: int, b: int) -> str:
    """Multiplies two integers."""
    return str(a * b)


@server.tool(description="Adds the `multiply` tool to this server's tools.")
async def enable_multiply(ctx: Context) -> str:
    if "multiply" not in [tool.name for tool in await server.list_tools()]:
        server.add_tool(multiply, name="multiply", title="Multiply two numbers")
    # Session-based clients (protocol 2025-11-25 and before) hear it on their session's stream;
    # 2026-07-28 clients on a `subscriptions/listen` stream.
    await ctx.session.send_tool_list_changed()
    await ctx.notify_tools_changed()
    return "multiply is now available"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server.run("streamable-http", host="127.0.0.1", port=args.port)
