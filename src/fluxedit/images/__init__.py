"""Reference images: fetching them (URLs, data: URIs, issued URLs) and decoding them safely."""
