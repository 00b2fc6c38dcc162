"""Cap governance: durable exploration caps with their audit trail (``store``), the evidence gate that a raise
needs (``gate``), and the ``gate`` / ``caps`` commands (``cli``). No gRPC server code here."""
