// socket.io-client 3.x, installed under an alias to prove v3 clients still work. Its API
// for what the tests use (io, emit with ack, events) matches v4's types.
declare module 'socket.io-client-v3' {
  export { io } from 'socket.io-client';
}
