"""A corpus of models from several exporters, opsets and graph shapes, and a runner that
puts every method to it (issue 14). Built at test time; nothing is committed but code.
`scripts/corpus_table.py` prints the matrix that docs/corpus.md holds."""
