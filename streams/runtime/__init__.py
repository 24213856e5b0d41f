"""What every stream process shares: the batch service over aiokafka and its client set-up."""
