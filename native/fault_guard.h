// Containing SIGBUS in guest memory mapped from a front end's fd. A front end
// that shrinks (ftruncate) a memory fd it handed over makes every access past
// the new end raise SIGBUS, which would kill the whole back end. Mappings are
// registered here; a SIGBUS inside one is answered by mapping private zero
// pages over the rest of that mapping (the access is retried and reads zeros),
// flagging the mapping and signalling its eventfd, so that the session ends
// with a reason. A SIGBUS anywhere else goes to the handler that was there
// before (or kills the process as it would have). Plain C++, no Node.
#pragma once
#include <cstddef>

namespace vt {
namespace fault_guard {

// Registers [base, base + len) (page-aligned) and installs the SIGBUS handler
// on first use. `notify_fd` is duplicated and written to (an eventfd) on a
// contained fault. Returns a slot id, or -1 when every slot is taken.
int Register(void* base, size_t len, int notify_fd);
// Forgets the slot and closes its notify fd. Call before munmap, when nobody
// can touch the mapping any more.
void Unregister(int slot);
// Whether a SIGBUS was contained inside the slot's mapping.
bool Faulted(int slot);
// Contained faults so far, over every mapping (for tests and statistics).
unsigned long Count();

}  // namespace fault_guard
}  // namespace vt
