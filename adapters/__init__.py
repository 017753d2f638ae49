"""Everything that touches the outside: the store, the codec, brokers."""
