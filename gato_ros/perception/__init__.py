"""Object poses from the cell's cameras (ROS-free): what the state policies read on a real cell."""
