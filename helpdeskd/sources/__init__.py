"""Where mail comes from. A source hands over raw bytes and forgets a message only when told it is filed."""
