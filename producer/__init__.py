"""Data preparation (MovieLens -> TFRecord shards) and the Kafka replay of the rating stream."""
