"""Adapters: the only modules that talk to MongoDB, RabbitMQ, MySQL and SMTP servers."""
