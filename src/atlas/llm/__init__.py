"""Model providers and the tool loop (issue #14): the wire goes through the official SDKs, the loop is ours."""
