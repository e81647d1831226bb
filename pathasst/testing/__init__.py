"""Test helpers that later stages reuse: fixture factories (images, PDFs, JATS articles), a local
HTTP server, and the network guard. Importing this package imports nothing heavy."""
