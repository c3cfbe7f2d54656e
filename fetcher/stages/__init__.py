"""What the bytes go through: digest, decoder, tar reader or file, the safe tree."""
