// The native engine tests again with io_uring turned off (VHOST_TAP_IO=readv):
// the readv/writev path must stay correct wherever io_uring is missing or
// forbidden. The engine reads the variable at each start(), so setting it
// before the tests run is enough.
process.env.VHOST_TAP_IO = 'readv';
// eslint-disable-next-line @typescript-eslint/no-require-imports
require('./native-engine.test');
