"""zstd internals (RFC 8878) the library does not expose, so a frame can be resumed mid-way.

blocks: walks frame and block headers and keeps, cheaply, the entropy tables in effect.
fse: table descriptions and decoding tables. sequences: repeat offsets from a block's
sequences. dictionary: the decoder state written as a zstd dictionary. xxh64: a content
checksum whose state can be saved. state: the saved form of all that, checked on load.
"""
