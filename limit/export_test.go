package limit

// Kill stops f as SIGKILL would: no slot is given back, the lease has to run out.
func (f *Fleet) Kill() {
	f.cancel()
	f.wg.Wait()
	f.cancel = nil
}

// Busiest is the most times within any one second.
var Busiest = busiest
