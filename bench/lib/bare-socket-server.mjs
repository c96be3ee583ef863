// The reference for the notifications pairs: a bare Socket.IO 4 server on HTTPS with the
// same certificate, where POST /emit answers, then puts a message to the room named in its body.
// Sockets join the room named in their handshake (`auth: {room}`). Run as a child process
// so its memory can be read on its own: node bare-socket-server.mjs <cert> <key>; prints its port.
import fs from 'node:fs';
import https from 'node:https';
import { Server } from 'socket.io';

const [certFile, keyFile] = process.argv.slice(2);
const server = https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) });
const io = new Server(server, { path: '/socket.io/', serveClient: false });
io.on('connection', (socket) => {
  socket.join(String(socket.handshake.auth.room));
  socket.emit('joined', { ok: true });
});
server.on('request', (request, response) => {
  if (request.url?.startsWith('/emit')) {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const { room, id, version } = JSON.parse(body);
      // Answer first, then emit, as Bantu does (it answers on commit and delivers after):
      // emitting first would make every latency zero and the ratio meaningless.
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ id, version }), () => {
        io.to(room).emit('Notify_File_update', { event_id: `evt_${version}`, type: 'File_update', occurred_at: new Date().toISOString(), file: { id, version }, actor: { type: 'user', id: room } });
      });
    });
  }
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${server.address().port}\n`));
