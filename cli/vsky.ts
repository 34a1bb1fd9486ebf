#!/usr/bin/env node
// Entry point of the `vsky` command. The libuv thread pool serves every disk
// pread/pwrite/fdatasync of a storage node; its default of 4 threads caps
// queue depth on the disks, so it is raised before anything touches it.
process.env.UV_THREADPOOL_SIZE ??= '16';

// `vsky volume list | head`: a closed pipe ends the output quietly, as for any Unix tool.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

const { main } = await import('./program.js');
await main(process.argv);
