"""Reading images and audio around the engines: PDF rendering, audio decoding, output formats."""
