// STUB, to be replaced.
