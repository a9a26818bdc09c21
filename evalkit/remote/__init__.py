"""Scripts evalkit copies to the server and runs there with the server's Python."""
